"""A Celery task that runs many requests at once: a batching consumer.

On the pattern of ``celery-batches``: the task's :meth:`Batches.Strategy`
buffers incoming requests instead of executing them, and ``run(requests)``
receives a list of :class:`SimpleRequest`. Where it deliberately differs
(README.md, "Batching consumer"):

* a batch is due when it is full (at once) or when its *oldest* request has
  waited ``flush_interval`` seconds (a deadline, not a repeating timer);
* batches form while the previous one runs, and only ``max_inflight``
  batches are handed to the pool at a time, so nothing queues in memory
  behind a busy model;
* the prefetch window is raised to hold two batches, so batches can fill;
* every request is still a task of its own: events, result, acknowledgement;
* a ``run`` that returns one value per request has them stored for it, and a
  group that raises is split in halves so one poison input fails alone.

Library code: it reads no environment and knows nothing of what it batches.
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from celery import signals
from celery.app.task import Task
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.utils.dispatch import Signal
from celery.utils.imports import symbol_by_name
from celery.utils.log import get_logger
from celery.utils.nodenames import gethostname
from celery.worker.request import Request, create_request_cls
from celery.worker.state import task_ready, task_reserved
from celery.worker.strategy import hybrid_to_proto2, proto1_to_proto2
from kombu.utils.uuid import uuid

from batching.scheduler import POLICIES, BatchScheduler
from batching.trace import BatchOutcome, apply_batch

__all__ = ["POLICIES", "Batches", "SimpleRequest", "batch_dispatched", "batch_finished"]

logger = get_logger(__name__)

#: Sent in the consumer when a batch goes to the pool: ``size``, ``wait``
#: (seconds the oldest request waited), ``queue_depth`` (left buffered),
#: ``expired`` (requests dropped because their ``expires`` had passed).
batch_dispatched = Signal(name="batch_dispatched")
#: Sent when a batch's results are stored: ``size``, ``seconds`` (time in
#: ``run``), ``succeeded``, ``failed``, ``run_sizes``.
batch_finished = Signal(name="batch_finished")


class SimpleRequest:
    """One request of a batch, as ``run(requests)`` sees it (picklable)."""

    #: Filled by :meth:`Batches.prepare` before ``run`` (None without it).
    prepared: Any = None
    # Read by the result backend when storing (celery.backends.base).
    chord = None
    group = None
    parent_id = None
    errbacks = None

    def __init__(
        self,
        id: str,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        delivery_info: dict[str, Any],
        hostname: str,
        ignore_result: bool,
        reply_to: str | None,
        correlation_id: str | None,
    ) -> None:
        self.id = id
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.delivery_info = delivery_info
        self.hostname = hostname
        self.ignore_result = ignore_result
        self.reply_to = reply_to
        self.correlation_id = correlation_id

    @classmethod
    def from_request(cls, request: Request) -> SimpleRequest:
        """Copy what ``run`` needs from a worker :class:`~celery.worker.request.Request`."""
        args, kwargs, _embed = request._payload
        return cls(request.id, request.name, tuple(args), dict(kwargs), request.delivery_info or {},
                   request.hostname, bool(getattr(request, "ignore_result", False)),
                   request.reply_to, request.correlation_id)


class Batches(Task):
    """Base class for tasks whose ``run(requests)`` takes a list of requests."""

    abstract = True
    #: Calls take the single task's arguments; ``run`` takes the list.
    typing = False

    #: Largest batch handed to ``run`` (celery-batches' name for it).
    flush_every: int = 10
    #: Seconds the oldest buffered request may wait for its batch to fill.
    flush_interval: float = 30.0
    #: ``timeout`` or ``adaptive``: see :data:`batching.scheduler.POLICIES`.
    batch_policy: str = "timeout"
    #: Batches handed to the pool at once (one per model copy).
    max_inflight: int = 1
    #: Threads running :meth:`prepare` as requests arrive (not with prefork,
    #: where ``prepare`` runs in the child before ``run``).
    prepare_concurrency: int = 2

    def run(self, requests: list[SimpleRequest]) -> Sequence[Any] | None:  # pragma: no cover
        raise NotImplementedError("must implement run(requests)")

    def prepare(self, request: SimpleRequest) -> Any:
        """Per-request work that can overlap the running batch (decoding, say).

        The value lands in ``request.prepared``; raising fails that request
        alone. Override it; the default is never called.
        """
        return None

    @property
    def has_prepare(self) -> bool:
        """Whether the task overrides :meth:`prepare`."""
        return type(self).prepare is not Batches.prepare

    # -- consumer side ---------------------------------------------------

    def Strategy(self, task: Batches, app: Any, consumer: Any) -> Callable[..., None]:
        """Return the message handler that buffers requests (cf. celery.worker.strategy.default)."""
        self._validate()
        self._consumer = consumer
        self._lock = threading.RLock()
        self._inflight = 0
        self._timer_entry: Any = None
        self._timer_at: float | None = None
        old = getattr(self, "_scheduler", None)
        if old is not None and len(old):  # reconnect: the broker redelivers these
            logger.warning("%s: dropping %d buffered requests after reconnect", self.name, len(old))
        self._scheduler: BatchScheduler[tuple[Request, Future[Any] | None]] = BatchScheduler(
            self.flush_every, self.flush_interval, self.batch_policy)
        self._executor = self._prepare_executor(consumer.pool)
        self._ensure_prefetch(consumer)

        Req = create_request_cls(symbol_by_name(task.Request), task, consumer.pool,
                                 consumer.hostname, consumer.event_dispatcher, app=app)
        eventer = consumer.event_dispatcher
        send_events = bool(eventer and eventer.enabled and task.send_events)

        def task_message_handler(message: Any, body: Any, ack: Any, reject: Any,
                                 callbacks: Any, **kw: Any) -> None:
            if body is None and "args" not in message.payload:
                body, headers, decoded, utc = (message.body, message.headers, False,
                                               app.uses_utc_timezone())
            elif "args" in message.payload:
                body, headers, decoded, utc = hybrid_to_proto2(message, message.payload)
            else:
                body, headers, decoded, utc = proto1_to_proto2(message, body)
            req = Req(message, on_ack=ack, on_reject=reject, app=app, hostname=consumer.hostname,
                      eventer=eventer, task=task, connection_errors=consumer.connection_errors,
                      body=body, headers=headers, decoded=decoded, utc=utc)
            if (req.expires or req.id in consumer.controller.state.revoked) and req.revoked():
                return
            signals.task_received.send(sender=consumer, request=req)
            if send_events:
                eventer.send("task-received", uuid=req.id, name=req.name, args=req.argsrepr,
                             kwargs=req.kwargsrepr, root_id=req.root_id, parent_id=req.parent_id,
                             retries=req.request_dict.get("retries", 0),
                             expires=req.expires and req.expires.isoformat())
            if req.eta is not None:
                self._schedule_eta(req)
            else:
                self._accept(req)

        return task_message_handler

    def _validate(self) -> None:
        if not isinstance(self.flush_every, int) or self.flush_every < 1:
            raise ValueError(f"{self.name}: flush_every must be a positive integer, "
                             f"got {self.flush_every!r}")
        if not self.flush_interval > 0:
            raise ValueError(f"{self.name}: flush_interval must be positive seconds, "
                             f"got {self.flush_interval!r}")
        if not isinstance(self.max_inflight, int) or self.max_inflight < 1:
            raise ValueError(f"{self.name}: max_inflight must be a positive integer, "
                             f"got {self.max_inflight!r}")

    def _prepare_executor(self, pool: Any) -> ThreadPoolExecutor | None:
        """Threads for :meth:`prepare`, unless prefork runs it in the child."""
        if not self.has_prepare or self.prepare_concurrency < 1 or isinstance(pool, PreforkPool):
            return None
        return ThreadPoolExecutor(self.prepare_concurrency, thread_name_prefix=f"{self.name}-prepare")

    def _ensure_prefetch(self, consumer: Any) -> None:
        """Let two batches per in-flight slot sit unacknowledged (celery-batches #17, #73)."""
        needed = 2 * self.flush_every * self.max_inflight
        current = consumer.initial_prefetch_count
        if current and current < needed:  # 0 means unlimited
            logger.info("%s: prefetch raised from %d to %d (2 x batch size)", self.name, current, needed)
            consumer.initial_prefetch_count = needed

    def _schedule_eta(self, req: Request) -> None:
        """Hold an ETA request until its time; a bad ETA fails that request alone."""
        try:
            delay = max(0.0, (req.eta - self.app.now()).total_seconds())
        except (OverflowError, TypeError, ValueError) as exc:
            logger.error("Bad ETA %r for %s: %r", req.eta, req.id, exc)
            req.task.backend.mark_as_failure(req.id, exc, request=req._context,
                                             store_result=req.store_errors)
            req.reject(requeue=False)
            return
        self._consumer.qos.increment_eventually()
        self._consumer.timer.call_after(delay, self._accept_after_eta, (req,))

    def _accept_after_eta(self, req: Request) -> None:
        self._consumer.qos.decrement_eventually()
        self._accept(req)

    def _accept(self, req: Request) -> None:
        task_reserved(req)
        future = None
        if self._executor is not None:
            simple = SimpleRequest.from_request(req)
            future = self._executor.submit(self.prepare, simple)
        with self._lock:
            self._scheduler.add((req, future), time.monotonic())
        self._maybe_dispatch()

    def _maybe_dispatch(self) -> None:
        """Hand every due batch to the pool while the model has room, then re-arm the timer."""
        with self._lock:
            while self._inflight < self.max_inflight:
                now = time.monotonic()
                wait = self._scheduler.oldest_age(now)
                batch = self._scheduler.take(now)
                if not batch:
                    break
                self._dispatch(batch, wait)
            self._arm_timer(self._scheduler.wakeup_at(time.monotonic()))

    def _arm_timer(self, when: float | None) -> None:
        if when == self._timer_at:
            return
        if self._timer_entry is not None:
            self._timer_entry.cancel()
            self._timer_entry = None
        self._timer_at = when
        if when is not None:
            delay = max(0.0, when - time.monotonic())
            self._timer_entry = self._consumer.timer.call_after(delay, self._on_timer)

    def _on_timer(self) -> None:
        with self._lock:
            self._timer_entry = None
            self._timer_at = None
        self._maybe_dispatch()

    def _dispatch(self, batch: list[tuple[Request, Future[Any] | None]], wait: float) -> None:
        # revoked() stores REVOKED, acknowledges and releases an expired request.
        live = [(req, fut) for req, fut in batch if not (req.expires and req.revoked())]
        batch_dispatched.send(sender=self, size=len(live), wait=wait,
                              queue_depth=len(self._scheduler), expired=len(batch) - len(live))
        if not live:
            return
        accepted_at = time.monotonic()
        pid = os.getpid()
        reqs = [req for req, _ in live]
        requests = [SimpleRequest.from_request(req) for req in reqs]
        futures = None if self._executor is None else [fut for _, fut in live]
        self._inflight += 1
        try:
            for req in reqs:
                req.on_accepted(pid, accepted_at)  # task-started event; early acks
            self._consumer.pool.apply_async(
                apply_batch, (self, requests, futures),
                callback=lambda result: self._on_batch_done(reqs, result, accepted_at),
            )
        except Exception as exc:  # the pool refused it: hand the messages back to the broker
            self._inflight -= 1
            logger.error("%s: could not dispatch a batch of %d: %r", self.name, len(reqs), exc,
                         exc_info=True)
            for req in reqs:
                req.reject(requeue=True)
                task_ready(req)

    def _on_batch_done(self, reqs: list[Request], result: Any, accepted_at: float) -> None:
        """Pool callback: events and late acks per request, then the next batch."""
        try:
            self._report(reqs, result, time.monotonic() - accepted_at)
        except Exception as exc:  # never lose the model slot over a reporting error
            logger.error("%s: reporting a batch failed: %r", self.name, exc, exc_info=True)
        finally:
            with self._lock:
                self._inflight -= 1
                if isinstance(result, BatchOutcome) and result.run_seconds > 0:
                    self._scheduler.cost.observe(len(reqs), result.run_seconds)  # adaptive policy
            hub = getattr(self._consumer, "hub", None)
            if hub is not None:
                hub.call_soon(self._maybe_dispatch)  # dispatch from the consumer's own thread
            else:
                self._maybe_dispatch()

    def _report(self, reqs: list[Request], result: Any, runtime: float) -> None:
        """Per request: its final event, its late ack, its release from worker state."""
        outcome = result if isinstance(result, BatchOutcome) else BatchOutcome()
        by_id = {o.id: o for o in outcome.outcomes}
        failed = 0
        for req in reqs:
            done = by_id.get(req.id)
            if done is None or done.state != "SUCCESS":
                failed += 1
                req.send_event("task-failed", exception=done.exception_repr if done else repr(result),
                               traceback=done.traceback if done else "")
            else:
                req.send_event("task-succeeded", result=done.result_repr, runtime=runtime)
            req.acknowledge()
            task_ready(req)
        batch_finished.send(sender=self, size=len(reqs), seconds=outcome.run_seconds,
                            succeeded=len(reqs) - failed, failed=failed, run_sizes=outcome.run_sizes)

    # -- eager execution -------------------------------------------------

    def apply(self, args: tuple[Any, ...] | None = None, kwargs: dict[str, Any] | None = None,
              *_args: Any, **options: Any) -> Any:
        """Execute synchronously as a batch of one (what ``task.apply()`` does)."""
        request = SimpleRequest(
            id=options.get("task_id") or uuid(), name=self.name, args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            delivery_info={"is_eager": True, "exchange": options.get("exchange"),
                           "routing_key": options.get("routing_key"),
                           "priority": options.get("priority")},
            hostname=gethostname(), ignore_result=options.get("ignore_result", False),
            reply_to=None, correlation_id=None)
        if self.has_prepare:
            request.prepared = self.prepare(request)
        return super().apply(([request],), {}, *_args, **options)

