"""Run one batch inside the worker pool: signals, request stack, results.

Mirrors what :func:`celery.app.trace.build_tracer` does for one task, once
per request of the batch: ``task_prerun``/``task_postrun`` and
``task_success``/``task_failure`` fire per request id, and each request's
result is stored under its own id so every caller's ``AsyncResult``
resolves. :func:`apply_batch` never raises: the pool's callback must always
run so the consumer can acknowledge and dispatch the next batch.
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
from celery.app.task import Context
from celery.utils.log import get_logger

if TYPE_CHECKING:
    from batching import Batches, SimpleRequest

__all__ = ["BatchOutcome", "RequestOutcome", "apply_batch"]

logger = get_logger(__name__)


@dataclass
class RequestOutcome:
    """What happened to one request; picklable for the prefork pool."""

    id: str
    state: str
    result_repr: str = ""
    exception_repr: str = ""
    traceback: str = ""
    #: Result not stored by us (``run`` returned None and stored its own).
    self_stored: bool = False


@dataclass
class BatchOutcome:
    """Per-request outcomes plus the batch's own timings."""

    outcomes: list[RequestOutcome] = field(default_factory=list)
    #: Seconds spent in ``run`` (all attempts, the forward passes included).
    run_seconds: float = 0.0
    #: Sizes of the groups handed to ``run`` (more than one after a split).
    run_sizes: list[int] = field(default_factory=list)


class _Failure:
    """A request that failed before or inside ``run``."""

    def __init__(self, exc: BaseException, tb: str) -> None:
        self.exc = exc
        self.tb = tb


def apply_batch(
    task: Batches,
    requests: Sequence[SimpleRequest],
    prepared: Sequence[Future[Any]] | None = None,
) -> BatchOutcome:
    """Execute ``task.run`` over ``requests`` and store each request's result."""
    outcome = BatchOutcome()
    try:
        values = _resolve_prepared(task, requests, prepared)
        ready = [r for r, v in zip(requests, values) if not isinstance(v, _Failure)]
        for request, value in zip(requests, values):
            if isinstance(value, _Failure):
                outcome.outcomes.append(_store_failure(task, request, value))
            else:
                request.prepared = value
        if ready:
            _run_isolated(task, ready, outcome)
    except Exception as exc:  # a bug here must not leave the batch unacknowledged
        logger.error("Batch of %d for %s failed outside run: %r", len(requests), task.name, exc,
                     exc_info=True)
        done = {o.id for o in outcome.outcomes}
        failure = _Failure(exc, traceback.format_exc())
        for request in requests:
            if request.id not in done:
                outcome.outcomes.append(_store_failure_safely(task, request, failure))
    return outcome


def _resolve_prepared(
    task: Batches, requests: Sequence[SimpleRequest], prepared: Sequence[Future[Any]] | None
) -> list[Any]:
    """Each request's prepared value, or a :class:`_Failure` for that request alone."""
    values: list[Any] = []
    for index, request in enumerate(requests):
        try:
            if prepared is not None:
                values.append(prepared[index].result())
            elif task.has_prepare:
                values.append(task.prepare(request))
            else:
                values.append(None)
        except Exception as exc:
            values.append(_Failure(exc, traceback.format_exc()))
    return values


def _run_isolated(task: Batches, requests: list[SimpleRequest], outcome: BatchOutcome) -> None:
    """Run the group; if it raises as a whole, split it so a poison input fails alone."""
    started = time.monotonic()
    outcome.run_sizes.append(len(requests))
    try:
        results = _traced_run(task, requests)
    except Exception as exc:
        outcome.run_seconds += time.monotonic() - started
        if len(requests) > 1:
            logger.warning("Batch of %d for %s raised %r; retrying as two halves",
                           len(requests), task.name, exc)
            half = len(requests) // 2
            _run_isolated(task, requests[:half], outcome)
            _run_isolated(task, requests[half:], outcome)
        else:
            logger.error("Request %s failed: %r", requests[0].id, exc, exc_info=True)
            outcome.outcomes.append(_store_failure(task, requests[0], _Failure(exc, traceback.format_exc())))
        return
    outcome.run_seconds += time.monotonic() - started
    if results is None:  # celery-batches style: run() stored its own results
        for request in requests:
            signals.task_success.send(sender=task, result=None)
            _postrun(task, request, None, states.SUCCESS)
            outcome.outcomes.append(RequestOutcome(request.id, states.SUCCESS, self_stored=True))
        return
    for request, value in zip(requests, results):
        if isinstance(value, BaseException):
            outcome.outcomes.append(_store_failure(task, request, _Failure(value, "")))
        else:
            outcome.outcomes.append(_store_success(task, request, value))


def _traced_run(task: Batches, requests: list[SimpleRequest]) -> list[Any] | None:
    """``task.run(requests)`` on the task's request stack, with per-request prerun signals."""
    for request in requests:
        signals.task_prerun.send(sender=task, task_id=request.id, task=task,
                                 args=request.args, kwargs=request.kwargs)
    _task_stack.push(task)
    task.request_stack.push(Context(loglevel=0, logfile=None))
    try:
        results = task.run(requests)
    finally:
        task.request_stack.pop()
        _task_stack.pop()
    if results is not None:
        results = list(results)
        if len(results) != len(requests):
            raise RuntimeError(
                f"{task.name}.run returned {len(results)} results for {len(requests)} requests"
            )
    return results


def _store_success(task: Batches, request: SimpleRequest, value: Any) -> RequestOutcome:
    task.backend.mark_as_done(request.id, value, request=request)
    signals.task_success.send(sender=task, result=value)
    _postrun(task, request, value, states.SUCCESS)
    return RequestOutcome(request.id, states.SUCCESS, result_repr=_short_repr(value))


def _store_failure(task: Batches, request: SimpleRequest, failure: _Failure) -> RequestOutcome:
    exc = failure.exc
    task.backend.mark_as_failure(request.id, exc, traceback=failure.tb, request=request)
    signals.task_failure.send(sender=task, task_id=request.id, exception=exc, args=request.args,
                              kwargs=request.kwargs, traceback=None, einfo=None)
    _postrun(task, request, exc, states.FAILURE)
    return RequestOutcome(request.id, states.FAILURE, exception_repr=repr(exc), traceback=failure.tb)


def _store_failure_safely(task: Batches, request: SimpleRequest, failure: _Failure) -> RequestOutcome:
    """Last resort: the outcome is reported even if the backend cannot store it."""
    try:
        return _store_failure(task, request, failure)
    except Exception as exc:
        logger.error("Could not store the failure of %s: %r", request.id, exc)
        return RequestOutcome(request.id, states.FAILURE, exception_repr=repr(failure.exc))


def _postrun(task: Batches, request: SimpleRequest, retval: Any, state: str) -> None:
    signals.task_postrun.send(sender=task, task_id=request.id, task=task, args=request.args,
                              kwargs=request.kwargs, retval=retval, state=state)


def _short_repr(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
