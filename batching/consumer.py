"""The batching runtime of one task in one worker consumer: buffers requests, hands due batches to the pool
(``max_inflight`` at a time, so the next forms while the model is busy); each request stays its own task."""
from __future__ import annotations

import functools
import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import Celery, signals, states
from celery.app.task import Task
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.utils.imports import symbol_by_name
from celery.utils.log import get_logger
from celery.worker.request import Request, create_request_cls
from celery.worker.state import task_ready, task_reserved
from celery.worker.strategy import hybrid_to_proto2, proto1_to_proto2

from batching.api import SimpleRequest, batch_dispatched, batch_finished
from batching.scheduler import BatchScheduler
from batching.trace import BatchOutcome, apply_batch, stored_before

if TYPE_CHECKING:
    from batching.task import Batches

__all__ = ["BatchConsumer", "guarded"]

logger = get_logger(__name__)

#: consumer -> {task name: runtime}: a broker reconnect runs Strategy again.
_RUNTIMES: weakref.WeakKeyDictionary[Any, dict[str, BatchConsumer]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class _Buffered:
    request: Request
    simple: SimpleRequest
    #: ``decode_request`` running on the runtime's threads (None: decoded in the pool).
    decoding: Future[Any] | None


def guarded(task: Task, consumer: Any, handler: Callable[..., None]) -> Callable[..., None]:
    """``handler``, but a redelivered message whose result is stored is acked at intake (not stored as
    REVOKED over it), and a malformed one fails under its id and is dropped, not stopping the consumer."""
    def on_message(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kwargs: Any) -> None:
        task_id = (getattr(message, "headers", None) or {}).get("id")
        try:
            if stored_before(task, task_id, getattr(message, "delivery_info", None)):
                logger.warning("%s: %s was redelivered after its result was stored; acknowledged, not run",
                               task.name, task_id)
                ack(logger, consumer.connection_errors)
                return
            handler(message, body, ack, reject, callbacks, **kwargs)
        except Exception as exc:
            logger.error("%s: dropping a malformed message (id %s): %r", task.name, task_id, exc)
            try:
                if task_id:
                    task.backend.mark_as_failure(task_id, exc)
            finally:
                reject(logger, consumer.connection_errors, False)
    return on_message


class BatchConsumer:
    """Buffer, timer and in-flight slots of one batching task in one consumer."""

    @classmethod
    def attach(cls, task: Batches, app: Celery, consumer: Any) -> BatchConsumer:
        """The runtime of ``task`` in ``consumer``; the same one after a broker reconnect."""
        runtimes = _RUNTIMES.setdefault(consumer, {})
        runtime = runtimes.get(task.name)
        if runtime is None:
            runtime = runtimes[task.name] = cls(task, app, consumer)
        else:
            runtime.reconnected(app)
        return runtime

    def __init__(self, task: Batches, app: Celery, consumer: Any) -> None:
        self.task = task
        self.consumer = consumer
        self._lock = threading.RLock()
        #: Batches handed to the pool and not yet reported back.
        self.inflight = 0
        self._timer_entry: Any = None
        self._timer_at: float | None = None
        self._scheduler: BatchScheduler[_Buffered] = BatchScheduler(
            task.flush_every, task.flush_interval, task.batch_policy)
        self._executor = self._decode_executor()
        self._bind(app)
        self._raise_prefetch()

    def __len__(self) -> int:
        return len(self._scheduler)

    def _bind(self, app: Celery) -> None:
        """Request class and event dispatcher of the current connection."""
        consumer = self.consumer
        self.app = app
        self._eventer = consumer.event_dispatcher
        self._send_events = bool(self._eventer and self._eventer.enabled and self.task.send_events)
        self._Request = create_request_cls(symbol_by_name(self.task.Request), self.task, consumer.pool,
                                           consumer.hostname, self._eventer, app=app)

    def _decode_executor(self) -> ThreadPoolExecutor | None:
        if (self.task.api is None or self.task.decode_concurrency < 1
                or isinstance(self.consumer.pool, PreforkPool)):
            return None
        return ThreadPoolExecutor(self.task.decode_concurrency, thread_name_prefix=f"{self.task.name}-decode")

    def _raise_prefetch(self) -> None:
        """Let two batches per in-flight slot sit unacknowledged (celery-batches #17, #73)."""
        needed = 2 * self.task.flush_every * self.task.max_inflight
        current = self.consumer.initial_prefetch_count
        if self.task.raise_prefetch and current and current < needed:  # 0 means unlimited
            logger.info("%s: prefetch raised from %d to %d (2 x batch size)", self.task.name, current, needed)
            self.consumer.initial_prefetch_count = needed

    def reconnected(self, app: Celery) -> None:
        """After a reconnect: drop the buffer (its messages come again); in-flight batches keep slots."""
        with self._lock:
            dropped = self._scheduler.drain()
            self._cancel_timer()
        for entry in dropped:
            task_ready(entry.request)
        if dropped:
            logger.warning("%s: %d buffered requests dropped after a reconnect; the broker "
                           "redelivers them", self.task.name, len(dropped))
        self._bind(app)
        self._raise_prefetch()  # Celery set it back to its own

    # -- intake (consumer thread)

    def on_message(self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any) -> None:
        """Buffer one task message (cf. ``celery.worker.strategy.default``); raises if malformed."""
        request = self._request(message, body, ack, reject)
        try:
            self._receive(request)
        except Exception as exc:
            self._fail(request, exc)

    def _request(self, message: Any, body: Any, ack: Any, reject: Any) -> Request:
        app = self.app
        if body is None and "args" not in message.payload:
            body, headers, decoded, utc = message.body, message.headers, False, app.uses_utc_timezone()
        elif "args" in message.payload:
            body, headers, decoded, utc = hybrid_to_proto2(message, message.payload)
        else:
            body, headers, decoded, utc = proto1_to_proto2(message, body)
        request: Request = self._Request(
            message, on_ack=ack, on_reject=reject, app=app, hostname=self.consumer.hostname,
            eventer=self._eventer, task=self.task, connection_errors=self.consumer.connection_errors,
            body=body, headers=headers, decoded=decoded, utc=utc)
        return request

    def _receive(self, request: Request) -> None:
        if (request.expires or request.id in self.consumer.controller.state.revoked) and request.revoked():
            return
        signals.task_received.send(sender=self.consumer, request=request)
        if self._send_events:
            self._eventer.send(
                "task-received", uuid=request.id, name=request.name, args=request.argsrepr,
                kwargs=request.kwargsrepr, root_id=request.root_id, parent_id=request.parent_id,
                retries=request.request_dict.get("retries", 0),
                expires=request.expires and request.expires.isoformat())
        simple = SimpleRequest.from_request(request)  # a malformed body fails here, alone
        if request.eta is None:
            self._accept(request, simple)
        else:
            self._hold_until_eta(request, simple)

    def _fail(self, request: Request, exc: Exception) -> None:
        """A request that cannot be buffered fails alone: FAILURE stored, message rejected."""
        logger.error("%s: request %s failed on receipt: %r", self.task.name, request.id, exc)
        try:
            self.task.backend.mark_as_failure(request.id, exc, store_result=request.store_errors)
            request.send_event("task-failed", exception=repr(exc), traceback="")
        finally:
            request.reject(requeue=False)

    def _hold_until_eta(self, request: Request, simple: SimpleRequest) -> None:
        try:
            delay = max(0.0, (request.eta - self.app.now()).total_seconds())
        except (OverflowError, TypeError, ValueError) as exc:
            raise ValueError(f"bad ETA {request.eta!r}: {exc}") from exc
        self.consumer.qos.increment_eventually()
        self.consumer.timer.call_after(delay, self._accept_after_eta, (request, simple))

    def _accept_after_eta(self, request: Request, simple: SimpleRequest) -> None:
        self.consumer.qos.decrement_eventually()
        self._accept(request, simple)

    def _accept(self, request: Request, simple: SimpleRequest) -> None:
        task_reserved(request)
        api, decoding = self.task.api, None
        if self._executor is not None and api is not None:
            decoding = self._executor.submit(lambda: api.decode(simple).decoded)
        with self._lock:
            self._scheduler.add(_Buffered(request, simple, decoding), time.monotonic())
        self._dispatch_due()

    # -- dispatch

    def _dispatch_due(self) -> None:
        """Hand every due batch to the pool while a slot is free, then re-arm the timer."""
        with self._lock:
            while self.inflight < self.task.max_inflight:
                now = time.monotonic()
                wait = self._scheduler.oldest_age(now)
                batch = self._scheduler.take(now)
                if not batch:
                    break
                self._dispatch(batch, wait)
            self._arm_timer(self._scheduler.wakeup_at(time.monotonic()))

    def _cancel_timer(self) -> None:
        if self._timer_entry is not None:
            self._timer_entry.cancel()
        self._timer_entry, self._timer_at = None, None

    def _arm_timer(self, when: float | None) -> None:
        if when == self._timer_at:
            return
        self._cancel_timer()
        if when is not None:
            self._timer_at = when
            delay = max(0.0, when - time.monotonic())
            self._timer_entry = self.consumer.timer.call_after(delay, self._on_timer)

    def _on_timer(self) -> None:
        with self._lock:
            self._timer_entry, self._timer_at = None, None
        self._dispatch_due()

    def _dispatch(self, batch: list[_Buffered], wait: float) -> None:
        # revoked() stores REVOKED, acknowledges and releases an expired request.
        live = [entry for entry in batch if not (entry.request.expires and entry.request.revoked())]
        batch_dispatched.send(sender=self.task, size=len(live), wait=wait,
                              queue_depth=len(self._scheduler), expired=len(batch) - len(live))
        if not live:
            return
        accepted_at, pid = time.monotonic(), os.getpid()
        requests = [entry.request for entry in live]
        decoding = None if self._executor is None else [entry.decoding for entry in live]
        done = functools.partial(self._on_batch_done, requests, accepted_at)
        self.inflight += 1
        try:
            for request in requests:
                request.on_accepted(pid, accepted_at)  # task-started event; acks_late=False acks here
            self.consumer.pool.apply_async(apply_batch, (self.task, [e.simple for e in live], decoding),
                                           callback=done, error_callback=done)
        except Exception as exc:  # the pool refused it: hand the messages back to the broker
            self.inflight -= 1
            logger.error("%s: could not dispatch a batch of %d: %r", self.task.name, len(requests), exc,
                         exc_info=True)
            self._reject(requests, requeue=True)

    def _on_batch_done(self, requests: list[Request], accepted_at: float, result: Any) -> None:
        """Pool callback: events and late acks per request, then the next batch."""
        try:
            self._report(requests, result, time.monotonic() - accepted_at)
        except Exception as exc:  # never lose the slot over a reporting error
            logger.error("%s: reporting a batch failed: %r", self.task.name, exc, exc_info=True)
        finally:
            with self._lock:
                self.inflight -= 1
                if isinstance(result, BatchOutcome) and result.run_seconds > 0:
                    self._scheduler.cost.observe(len(requests), result.run_seconds)  # adaptive policy
            hub = getattr(self.consumer, "hub", None)
            if hub is not None:
                hub.call_soon(self._dispatch_due)  # from the consumer's own thread
            else:
                self._dispatch_due()

    def _report(self, requests: list[Request], result: Any, runtime: float) -> None:
        """Per request: its final event, its acknowledgement, its release from worker state."""
        if not isinstance(result, BatchOutcome):  # the pool lost the batch (a child died)
            logger.error("%s: a batch of %d was lost in the pool: %r", self.task.name, len(requests), result)
            self._reject(requests, requeue=bool(self.task.acks_late and self.task.reject_on_worker_lost))
            return
        by_id = {outcome.id: outcome for outcome in result.outcomes}
        failed = settled = 0
        for request in requests:
            outcome = by_id.get(request.id)
            if outcome is not None and outcome.state in (states.REVOKED, states.IGNORED):
                # Not run (trace.settle): expired, or its result was already stored.
                settled += 1
                if outcome.state == states.REVOKED:
                    request.send_event("task-revoked", terminated=False, signum=None, expired=True)
            elif outcome is None or outcome.state != states.SUCCESS:
                failed += 1
                request.send_event("task-failed", exception=outcome.exception_repr if outcome else "lost",
                                   traceback=outcome.traceback if outcome else "")
            else:
                request.send_event("task-succeeded", result=outcome.result_repr, runtime=runtime)
            if self.task.acks_late:  # an early ack was made when the pool accepted it: once per delivery
                request.acknowledge()
            task_ready(request)
        batch_finished.send(sender=self.task, size=len(requests) - settled, seconds=result.run_seconds,
                            succeeded=len(requests) - settled - failed, failed=failed)

    @staticmethod
    def _reject(requests: list[Request], requeue: bool) -> None:
        for request in requests:
            request.reject(requeue=requeue)
            task_ready(request)
