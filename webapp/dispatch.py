"""Sending a classify task by name, and reading what came back.

``send`` is the only function that talks to the broker: tests replace it.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask
from redis.exceptions import OutOfMemoryError, RedisError

from celery import Celery, states
from kombu.exceptions import OperationalError

from common.contract import WIRE_ERROR_CODES, ClassifyArgs, ClassifyResult, task_name
from common.image_store import ImageStore

from . import metrics
from .accepted import AcceptedTasks
from .admission import BoundedQueue, WaitingRequests
from .deadlines import Deadline
from .exceptions import (
    BrokerUnavailable,
    InvalidImage,
    InvalidRequest,
    Overloaded,
    ResultTimeout,
    TaskExpired,
    WebAppError,
    WorkerFailure,
)
from .models import WebModel
from .results import ResultWaiter

__all__ = ["Outcome", "admit", "classify", "owner_of", "result_or_raise", "revoke", "send", "status",
           "submit"]

logger = logging.getLogger(__name__)

#: What sending raises when the broker is down: kombu wraps the transport's
#: errors as OperationalError; the rest can escape from the redis client.
_BROKER_ERRORS = (OperationalError, RedisError, OSError)

#: A worker's client-input error (``common.contract.WIRE_ERROR_CODES``) by
#: error code: the response it becomes, and its message when the worker gave none.
_CLIENT_ERRORS: dict[str, tuple[type[WebAppError], str]] = {
    InvalidImage.code: (InvalidImage, "the image cannot be decoded"),
    InvalidRequest.code: (InvalidRequest, "the worker rejected the task's arguments"),
    TaskExpired.code: (TaskExpired, "the request expired before a worker could take it"),
}


@dataclass(frozen=True)
class Outcome:
    """A finished synchronous request: its id, send time and ready meta."""

    task_id: str
    #: Epoch seconds just before the task was sent.
    sent_at: float
    #: Celery's decoded result meta (``status``, ``result``...).
    meta: dict[str, Any]


def _out_of_memory(exc: BaseException) -> bool:
    """Redis refused a write under ``maxmemory`` + ``noeviction`` (kombu may wrap the error)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, OutOfMemoryError) or str(seen).startswith("OOM "):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _unavailable(exc: BaseException, what: str, retry_after: int) -> BrokerUnavailable:
    if _out_of_memory(exc):
        return Overloaded("the task queue is full (out of memory); try again shortly", retry_after,
                          reason="out_of_memory")
    return BrokerUnavailable(f"the {what} is unreachable; try again shortly", retry_after)


def send(celery: Celery, name: str, image: bytes, top_k: int, *,
         task_id: str, queue: str, expires: datetime, retry_after: int,
         images: ImageStore | None = None, model: str = "") -> None:
    """Publish task ``name`` with ``ClassifyArgs(image, top_k)`` to ``queue``; BrokerUnavailable on failure.

    ``expires`` is the request's absolute deadline; Overloaded (503) when
    Redis is out of memory. With ``images`` the image is stored there first and
    the message carries None in its place (``common.image_store``).
    """
    try:
        if images is not None:
            images.put(task_id, image, (expires - datetime.now(UTC)).total_seconds())
        celery.send_task(
            name, args=ClassifyArgs(None if images else image, top_k), task_id=task_id, queue=queue,
            expires=expires, argsrepr=f"<image {len(image)} bytes>, top_k={top_k}",
            kwargsrepr=f"{{'model': {model!r}}}")
    except _BROKER_ERRORS as exc:
        logger.warning("Could not send task %s (%s): %s", task_id, name, exc)
        _forget_image(images, task_id)
        raise _unavailable(exc, "task queue", retry_after) from exc


def _forget_image(images: ImageStore | None, task_id: str) -> None:
    """Best effort: an image whose task was never sent only waits for its expiry."""
    if images is None:
        return
    try:
        images.delete([task_id])
    except _BROKER_ERRORS as exc:
        logger.debug("Could not delete the image of unsent task %s: %s", task_id, exc)


def _queue(model: WebModel, asynchronous: bool) -> BoundedQueue:
    return model.queues["async" if asynchronous else "sync"]


def admit(app: Flask, model: WebModel, asynchronous: bool) -> None:
    """Overloaded (503) when the request's queue is full (``MAX_SYNC_QUEUE_LENGTH``, ``MAX_QUEUE_LENGTH``)."""
    _queue(model, asynchronous).admit(app.config["BROKER_RETRY_AFTER"])


def _send(app: Flask, model: WebModel, image: bytes, top_k: int, task_id: str, deadline: Deadline,
          asynchronous: bool) -> None:
    config = app.config
    name = task_name(batch=model.batch_mode(config["USE_BATCH_PROCESSING"]))
    send(app.extensions["celery"], name, image, top_k, task_id=task_id,
         queue=_queue(model, asynchronous).name, expires=deadline.expires(),
         retry_after=config["BROKER_RETRY_AFTER"], images=app.extensions["images"], model=model.name)


def submit(app: Flask, model: WebModel, image: bytes, top_k: int, deadline: Deadline, owner: str) -> str:
    """Admit, record (for ``/tasks/<id>``, owned by ``owner``) and send a task; return its id."""
    admit(app, model, asynchronous=True)
    task_id = str(uuid.uuid4())
    accepted: AcceptedTasks = app.extensions["accepted"]
    retry_after = app.config["BROKER_RETRY_AFTER"]
    try:
        # As long as the task may wait, then as long as its result lives.
        accepted.record(task_id, owner, deadline.remaining() + app.config["RESULT_EXPIRES"])
    except RedisError as exc:
        logger.warning("Could not record task %s: %s", task_id, exc)
        raise _unavailable(exc, "result store", retry_after) from exc
    try:
        _send(app, model, image, top_k, task_id, deadline, asynchronous=True)
    except BrokerUnavailable:
        accepted.forget(task_id)
        raise
    return task_id


def classify(app: Flask, model: WebModel, image: bytes, top_k: int, deadline: Deadline) -> Outcome:
    """Send a classify task and wait for its result until ``deadline``.

    Holds one of this process' waiting slots (Overloaded when none is free).
    A request whose deadline passes revokes its task, so no worker computes
    it for nobody.
    """
    waiting: WaitingRequests = app.extensions["waiting_requests"]
    with waiting.slot(app.config["BROKER_RETRY_AFTER"]):
        admit(app, model, asynchronous=False)
        if deadline.remaining() <= 0:
            raise TaskExpired("the request's deadline passed before its task was sent")
        return _send_and_wait(app, model, image, top_k, deadline)


def _send_and_wait(app: Flask, model: WebModel, image: bytes, top_k: int, deadline: Deadline) -> Outcome:
    waiter: ResultWaiter = app.extensions["result_waiter"]
    task_id = str(uuid.uuid4())
    # Registered before sending, so a fast result cannot slip past.
    with waiter.expecting(task_id):
        sent_at = time.time()
        _send(app, model, image, top_k, task_id, deadline, asynchronous=False)
        try:
            meta = waiter.wait(task_id, max(deadline.remaining(), 1e-3))
        except ResultTimeout:
            revoke(app, task_id)
            raise
    return Outcome(task_id, sent_at, meta)


def revoke(app: Flask, task_id: str) -> None:
    """Tell the workers to drop ``task_id`` (cheap: no terminate); best effort."""
    metrics.revoked(app)
    try:
        app.extensions["celery"].control.revoke(task_id)
    except Exception as exc:  # noqa: BLE001 - the answer (504) must not depend on it
        logger.warning("Could not revoke task %s: %s", task_id, exc)


def status(app: Flask, task_id: str) -> dict[str, Any] | None:
    """Return the stored meta of ``task_id``, or None while nothing is stored."""
    waiter: ResultWaiter = app.extensions["result_waiter"]
    try:
        return waiter.fetch(task_id)
    except RedisError as exc:
        logger.warning("Could not read the result of task %s: %s", task_id, exc)
        raise _unavailable(exc, "result store", app.config["BROKER_RETRY_AFTER"]) from exc


def owner_of(app: Flask, task_id: str) -> str | None:
    """The key hash that created async task ``task_id``; None when unknown or expired."""
    try:
        owner: str | None = app.extensions["accepted"].owner(task_id)
    except RedisError as exc:
        logger.warning("Could not read the record of task %s: %s", task_id, exc)
        raise _unavailable(exc, "result store", app.config["BROKER_RETRY_AFTER"]) from exc
    return owner


def result_or_raise(meta: dict[str, Any]) -> ClassifyResult:
    """Return a successful task's result; raise the matching WebAppError otherwise."""
    state = meta.get("status")
    if state == states.SUCCESS:
        result: ClassifyResult = meta["result"]
        return result
    if state == states.REVOKED:
        raise TaskExpired("the request expired before a worker could take it")
    raw = meta.get("result")
    error: dict[str, Any] = raw if isinstance(raw, dict) else {}
    exc_type = str(error.get("exc_type") or "error")
    exc_message = _exc_message(error.get("exc_message"))
    code = WIRE_ERROR_CODES.get(exc_type)
    if state == states.FAILURE and code is not None:
        error_class, fallback = _CLIENT_ERRORS[code]
        raise error_class(exc_message or fallback)
    if state == states.FAILURE:
        raise WorkerFailure(f"the worker failed: {exc_type}: {exc_message}".rstrip(": "))
    raise WorkerFailure(f"unexpected task state {state!r}")


def _exc_message(raw: Any) -> str:
    if isinstance(raw, (list, tuple)):
        return ", ".join(str(part) for part in raw)
    return "" if raw is None else str(raw)
