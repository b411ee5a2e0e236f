"""Run one batch inside the worker pool: signals, the task stack, results per request.

Each call of ``run`` is traced as ``celery_batches.trace.apply_batches_task``
traces it: the task on Celery's task stack, ``task_prerun``, then
``task_success`` or ``task_failure``, then ``task_postrun``, once per call,
with sender the task, a fresh task id and ``args=(requests,)``. Beyond that:

* a task with an :class:`~batching.api.BatchAPI` gets its results stored per
  request (on a Redis backend, a batch's successes in one round trip), and a
  group that raises is split in halves so a poison input fails alone;
* a ``run(requests)`` task stores its own results (celery-batches' way); if it
  raises, every request of the call is stored as failed, so no caller waits
  for a result that will never come;
* just before the forward pass, a request whose deadline (``expires``) has
  passed is stored as REVOKED ("expired") and not run, and one whose result is
  already stored (a message redelivered after its worker died between storing
  and acknowledging) is skipped, so each result is written once (:func:`settle`);
* once the results are stored, the API's ``release`` hook gets the batch.

:func:`apply_batch` never raises: the pool's callback must always run, so the
consumer can acknowledge and dispatch the next batch.
"""
from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery import signals, states
from celery._state import _task_stack
from celery.app.task import Context, Task
from celery.backends.base import DisabledBackend
from celery.backends.redis import RedisBackend
from celery.utils.log import get_logger
from kombu.utils.uuid import uuid

from batching.request import SimpleRequest

if TYPE_CHECKING:
    from batching.task import Batches

__all__ = ["BatchOutcome", "RequestOutcome", "already_stored", "apply_batch", "release", "result_stored",
           "settle"]

logger = get_logger(__name__)


@dataclass
class RequestOutcome:
    """What happened to one request; picklable for the prefork pool."""

    id: str
    state: str
    result_repr: str = ""
    exception_repr: str = ""
    traceback: str = ""


@dataclass
class BatchOutcome:
    """Per-request outcomes, and seconds spent in ``run`` (every call, retries included)."""

    outcomes: list[RequestOutcome] = field(default_factory=list)
    run_seconds: float = 0.0


@dataclass
class _Failure:
    exc: BaseException
    tb: str


def apply_batch(
    task: Batches, requests: Sequence[SimpleRequest], decoding: Sequence[Future[Any]] | None = None,
) -> BatchOutcome:
    """Decode what is not decoded yet, run the batch, store each request's result."""
    outcome = BatchOutcome()
    try:
        decoded = []
        for request, failure in _decoded(task, requests, decoding):
            if failure is None:
                decoded.append(request)
            else:
                outcome.outcomes.append(_store_failure(task, request, failure))
        ready = []
        for request in decoded:  # checked last: decoding and waiting for a pool slot take time
            state = settle(task, request)
            if state is None:
                ready.append(request)
            else:
                outcome.outcomes.append(RequestOutcome(request.id, state))
        if ready and task.api is None:
            _run_once(task, ready, outcome)
        elif ready:
            _run_isolated(task, ready, outcome)
    except Exception as exc:  # a bug here must not leave the batch unacknowledged
        logger.error("Batch of %d for %s failed outside run: %r", len(requests), task.name, exc,
                     exc_info=True)
        done = {o.id for o in outcome.outcomes}
        failure = _Failure(exc, traceback.format_exc())
        outcome.outcomes += [_store_failure_safely(task, r, failure) for r in requests if r.id not in done]
    release(task, requests)
    return outcome


def release(task: Task, requests: Sequence[SimpleRequest]) -> None:
    """The API's ``release`` hook for requests whose results are stored; never raises."""
    api = getattr(task, "api", None)
    if api is None or not requests:
        return
    try:
        api.release(requests)
    except Exception as exc:
        logger.warning("%s: releasing %d request(s) failed: %r", task.name, len(requests), exc)


def settle(task: Task, request: SimpleRequest) -> str | None:
    """None if ``request`` should run now; else why not, with its result taken care of.

    ``IGNORED``: its result is already stored (it was redelivered: its worker
    died between storing and acknowledging); nothing is written again, even
    when its deadline has passed since. ``REVOKED``: its deadline passed;
    stored as revoked ("expired") and ``task_revoked`` sent with
    ``expired=True``, as Celery does for a message that expires before it runs.
    """
    if already_stored(task, request):
        logger.warning("Request %s of %s was redelivered after its result was stored; not run again",
                       request.id, task.name)
        return states.IGNORED
    if request.expired():
        logger.info("Request %s of %s expired before it ran", request.id, task.name)
        task.backend.mark_as_revoked(request.id, "expired", request=request,
                                     store_result=not request.ignore_result)
        signals.task_revoked.send(sender=task, request=request, terminated=False, signum=None, expired=True)
        return states.REVOKED
    return None


def already_stored(task: Task, request: Any) -> bool:
    """Only a redelivered message can have a stored result: others cost no read."""
    if not (request.delivery_info or {}).get("redelivered") or request.ignore_result:
        return False
    return result_stored(task, request.id)


def result_stored(task: Task, task_id: str) -> bool:
    """Whether ``task_id`` has a final state in ``task``'s result backend (False when unsure)."""
    if isinstance(task.backend, DisabledBackend):
        return False
    try:
        return task.backend.get_task_meta(task_id)["status"] in states.READY_STATES
    except Exception as exc:  # can't tell: run it (at least once beats at most once)
        logger.warning("Could not read the stored state of %s: %r", task_id, exc)
        return False


def _decoded(
    task: Batches, requests: Sequence[SimpleRequest], decoding: Sequence[Future[Any]] | None,
) -> list[tuple[SimpleRequest, _Failure | None]]:
    """Each request with its decoded input set, or the failure of its ``decode_request``."""
    if task.api is None:
        return [(request, None) for request in requests]
    pairs: list[tuple[SimpleRequest, _Failure | None]] = []
    for index, request in enumerate(requests):
        try:
            if decoding is None:
                task.api.decode(request)
            else:
                request.decoded = decoding[index].result()
            pairs.append((request, None))
        except Exception as exc:
            pairs.append((request, _Failure(exc, traceback.format_exc())))
    return pairs


def _run_once(task: Batches, requests: list[SimpleRequest], outcome: BatchOutcome) -> None:
    """A ``run(requests)`` task: one call; it stores its own results."""
    started = time.monotonic()
    try:
        _traced_run(task, requests)
    except Exception as exc:
        failure = _Failure(exc, traceback.format_exc())
        outcome.outcomes += [_store_failure(task, request, failure) for request in requests]
    else:
        outcome.outcomes += [RequestOutcome(request.id, states.SUCCESS) for request in requests]
    finally:
        outcome.run_seconds += time.monotonic() - started


def _run_isolated(task: Batches, requests: list[SimpleRequest], outcome: BatchOutcome) -> None:
    """An API task: store each result; if the group raises, split it so a poison input fails alone."""
    started = time.monotonic()
    try:
        results = _traced_run(task, requests)
        if not isinstance(results, (list, tuple)) or len(results) != len(requests):
            raise RuntimeError(f"{task.name} returned {_count(results)} results for {len(requests)} requests")
    except Exception as exc:
        outcome.run_seconds += time.monotonic() - started
        if len(requests) > 1:
            logger.warning("Batch of %d for %s raised %r; retrying as two halves",
                           len(requests), task.name, exc)
            half = len(requests) // 2
            _run_isolated(task, requests[:half], outcome)
            _run_isolated(task, requests[half:], outcome)
        else:
            outcome.outcomes.append(_store_failure(task, requests[0], _Failure(exc, traceback.format_exc())))
        return
    outcome.run_seconds += time.monotonic() - started
    outcome.outcomes += _store_successes(task, requests, results)


def _count(results: Any) -> str:
    return str(len(results)) if isinstance(results, (list, tuple)) else type(results).__name__


def _traced_run(task: Batches, requests: list[SimpleRequest]) -> Any:
    """``task(requests)`` with celery-batches' signals, once for this call."""
    task_id, args = uuid(), (requests,)
    _task_stack.push(task)
    task.request_stack.push(Context(loglevel=0, logfile=None))
    state, result = states.FAILURE, None
    try:
        signals.task_prerun.send(sender=task, task_id=task_id, task=task, args=args, kwargs={})
        try:
            result = task(*args)
        except Exception as exc:
            signals.task_failure.send(sender=task, task_id=task_id, exception=exc, args=args, kwargs={},
                                      traceback=exc.__traceback__, einfo=None)
            raise
        state = states.SUCCESS
        signals.task_success.send(sender=task, result=result)
        return result
    finally:
        try:
            signals.task_postrun.send(sender=task, task_id=task_id, task=task, args=args, kwargs={},
                                      retval=result, state=state)
        finally:
            task.request_stack.pop()
            _task_stack.pop()


def _store_successes(task: Batches, requests: list[SimpleRequest],
                     values: Sequence[Any]) -> list[RequestOutcome]:
    """Store each request's result: on a Redis backend with one read and one pipeline for the
    batch, else request by request (``mark_as_done``)."""
    backend = task.backend
    stored = [(r, v) for r, v in zip(requests, values) if not r.ignore_result]
    if not isinstance(backend, RedisBackend) or len(stored) < 2 or any(r.chord for r, _ in stored):
        return [_store_success(task, request, value) for request, value in zip(requests, values)]
    _store_on_redis(backend, stored)
    return [RequestOutcome(r.id, states.SUCCESS, result_repr=_short_repr(v))
            for r, v in zip(requests, values)]


def _store_on_redis(backend: RedisBackend, results: list[tuple[SimpleRequest, Any]]) -> None:
    """What ``mark_as_done`` does for each result (``BaseKeyValueStoreBackend._store_result`` then
    ``RedisBackend._set``: leave a stored SUCCESS alone, else SET with the backend's expiry and
    PUBLISH), as one MGET and one pipeline, retried as Celery retries a store."""
    keys, values = [], []
    for request, value in results:
        meta = backend._get_result_meta(result=backend.encode_result(value, states.SUCCESS),
                                        state=states.SUCCESS, traceback=None, request=request)
        meta["task_id"] = request.id
        keys.append(backend.get_key_for_task(request.id))
        values.append(backend.encode(meta))

    def write() -> None:
        current = backend.client.mget(keys)
        with backend.client.pipeline() as pipe:
            for key, value, before in zip(keys, values, current):
                if before is not None and backend.decode_result(before)["status"] == states.SUCCESS:
                    continue  # a lost worker's duplicate never overwrites a success (Celery's rule)
                if backend.expires:
                    pipe.setex(key, backend.expires, value)
                else:
                    pipe.set(key, value)
                pipe.publish(key, value)
            pipe.execute()

    backend.ensure(write, ())


def _store_success(task: Batches, request: SimpleRequest, value: Any) -> RequestOutcome:
    task.backend.mark_as_done(request.id, value, request=request, store_result=not request.ignore_result)
    return RequestOutcome(request.id, states.SUCCESS, result_repr=_short_repr(value))


def _store_failure(task: Batches, request: SimpleRequest, failure: _Failure) -> RequestOutcome:
    exc = failure.exc
    if isinstance(exc, task.throws):  # expected (bad input): no traceback in the log, as Celery does
        logger.info("Request %s of %s failed: %r", request.id, task.name, exc)
    else:
        logger.error("Request %s of %s failed: %r", request.id, task.name, exc, exc_info=exc)
    task.backend.mark_as_failure(request.id, exc, traceback=failure.tb, request=request,
                                 store_result=not request.ignore_result)
    return RequestOutcome(request.id, states.FAILURE, exception_repr=repr(exc), traceback=failure.tb)


def _store_failure_safely(task: Batches, request: SimpleRequest, failure: _Failure) -> RequestOutcome:
    """Last resort: the outcome is reported even if the backend cannot store it."""
    try:
        return _store_failure(task, request, failure)
    except Exception as exc:
        logger.error("Could not store the failure of %s: %r", request.id, exc)
        return RequestOutcome(request.id, states.FAILURE, exception_repr=repr(failure.exc))


def _short_repr(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
