"""Run one batch inside the worker pool and store each request's result.
A raising API group is split in halves so a poison input fails alone; a raising ``run`` fails them all."""
from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery import signals, states
from celery.app.task import Task
from celery.backends.base import DisabledBackend
from celery.utils.log import get_logger
from celery.utils.saferepr import saferepr

from batching.api import SimpleRequest

if TYPE_CHECKING:
    from batching.task import Batches

__all__ = ["BatchOutcome", "RequestOutcome", "apply_batch", "release", "settle", "stored_before"]

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
    outcomes: list[RequestOutcome] = field(default_factory=list)
    #: Seconds in ``run``, every call (halves included): the adaptive policy's cost model.
    run_seconds: float = 0.0


def apply_batch(task: Batches, requests: Sequence[SimpleRequest],
                decoding: Sequence[Future[Any]] | None = None) -> BatchOutcome:
    """Decode, run the batch, store each result; never raises, so the pool's callback always runs."""
    outcome = BatchOutcome()
    try:
        decoded = []
        for index, request in enumerate(requests):
            try:
                if task.api is not None and decoding is None:
                    task.api.decode(request)
                elif task.api is not None and decoding is not None:
                    request.decoded = decoding[index].result()
                decoded.append(request)
            except Exception as exc:  # expected errors (task.throws) without a traceback, as Celery
                expected = isinstance(exc, task.throws)
                logger.log(logging.INFO if expected else logging.ERROR, "Request %s of %s failed: %r",
                           request.id, task.name, exc, exc_info=None if expected else exc)
                outcome.outcomes.append(_store_failure(task, request, exc, traceback.format_exc()))
        ready = []
        for request in decoded:  # checked last: decoding and waiting for a pool slot take time
            state = settle(task, request)
            if state is None:
                ready.append(request)
            else:
                outcome.outcomes.append(RequestOutcome(request.id, state))
        if ready:
            _run(task, ready, outcome)
    except Exception as exc:  # a bug here must not leave the batch unacknowledged
        logger.error("Batch of %d for %s failed outside run: %r", len(requests), task.name, exc,
                     exc_info=True)
        done, tb = {o.id for o in outcome.outcomes}, traceback.format_exc()
        for request in requests:
            if request.id not in done:
                try:
                    outcome.outcomes.append(_store_failure(task, request, exc, tb))
                except Exception as store_exc:  # reported even if the backend cannot store it
                    logger.error("Could not store the failure of %s: %r", request.id, store_exc)
                    outcome.outcomes.append(RequestOutcome(request.id, states.FAILURE, "", repr(exc)))
    release(task, requests)
    return outcome


def _run(task: Batches, requests: list[SimpleRequest], outcome: BatchOutcome) -> None:
    started = time.monotonic()
    # Celery's tracer, storing nothing under the call's own id (ignore_result).
    result = Task.apply(task, (requests,), throw=False, ignore_result=True)
    outcome.run_seconds += time.monotonic() - started
    values, exc = result.result, None
    if not result.successful():
        exc = values if isinstance(values, BaseException) else RuntimeError(result.state)
    elif task.api is not None and not (isinstance(values, (list, tuple)) and len(values) == len(requests)):
        count = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
        exc = RuntimeError(f"{task.name} returned {count} results for {len(requests)} requests")
    if exc is None and task.api is None:  # a run(requests) task stores its own results
        outcome.outcomes += [RequestOutcome(request.id, states.SUCCESS) for request in requests]
    elif exc is None:
        for request, value in zip(requests, values):
            task.backend.mark_as_done(request.id, value, request=request,
                                      store_result=not request.ignore_result)
            outcome.outcomes.append(RequestOutcome(request.id, states.SUCCESS,
                                                   result_repr=saferepr(value, task.resultrepr_maxsize)))
    elif task.api is not None and len(requests) > 1:
        logger.warning("Batch of %d for %s raised %r; retrying as two halves", len(requests), task.name, exc)
        half = len(requests) // 2
        _run(task, requests[:half], outcome)
        _run(task, requests[half:], outcome)
    else:
        tb = result.traceback or "".join(traceback.format_exception(exc))
        for request in requests:  # a raised error is in the log already: Celery's tracer logs it
            logger.info("Request %s of %s failed: %r", request.id, task.name, exc)
            outcome.outcomes.append(_store_failure(task, request, exc, tb))


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
    """None if ``request`` should run now; else ``IGNORED`` (already stored) or ``REVOKED`` (expired)."""
    if not request.ignore_result and stored_before(task, request.id, request.delivery_info):
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


def stored_before(task: Task, task_id: str | None, delivery_info: dict[str, Any] | None) -> bool:
    """Whether a redelivered message's ``task_id`` has a final state stored; others cost no read."""
    redelivered = bool(task_id and (delivery_info or {}).get("redelivered"))
    if not redelivered or isinstance(task.backend, DisabledBackend):
        return False
    try:
        return task.backend.get_task_meta(task_id)["status"] in states.READY_STATES
    except Exception as exc:  # can't tell: run it (at least once beats at most once)
        logger.warning("Could not read the stored state of %s: %r", task_id, exc)
        return False


def _store_failure(task: Task, request: SimpleRequest, exc: BaseException, tb: str) -> RequestOutcome:
    task.backend.mark_as_failure(request.id, exc, traceback=tb, request=request,
                                 store_result=not request.ignore_result)
    return RequestOutcome(request.id, states.FAILURE, exception_repr=repr(exc), traceback=tb)
