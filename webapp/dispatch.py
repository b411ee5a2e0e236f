"""Sending a classify task by name, and reading what came back.

``send`` is the only function that talks to the broker: tests replace it.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from flask import Flask
from redis.exceptions import RedisError

from celery import Celery, states
from kombu.exceptions import OperationalError

from common.contract import WIRE_ERROR_CODES, ClassifyArgs, ClassifyResult, task_name

from .exceptions import (
    BrokerUnavailable,
    InvalidImage,
    InvalidRequest,
    TaskExpired,
    WebAppError,
    WorkerFailure,
)
from .results import ResultWaiter

__all__ = ["Outcome", "classify", "result_or_raise", "send", "status", "submit"]

logger = logging.getLogger(__name__)

#: What sending raises when the broker is down: kombu wraps the transport's
#: errors as OperationalError; the rest can escape from the redis client.
_BROKER_ERRORS = (OperationalError, RedisError, OSError)

#: A worker's client-input error (``common.contract.WIRE_ERROR_CODES``) by
#: error code: the response it becomes, and its message when the worker gave none.
_CLIENT_ERRORS: dict[str, tuple[type[WebAppError], str]] = {
    InvalidImage.code: (InvalidImage, "the image cannot be decoded"),
    InvalidRequest.code: (InvalidRequest, "the worker rejected the task's arguments"),
}


@dataclass(frozen=True)
class Outcome:
    """A finished synchronous request: its id, send time and ready meta."""

    task_id: str
    #: Epoch seconds just before the task was sent.
    sent_at: float
    #: Celery's decoded result meta (``status``, ``result``...).
    meta: dict[str, Any]


def send(celery: Celery, name: str, image: bytes, top_k: int, *,
         task_id: str, expires: float, retry_after: int) -> None:
    """Publish task ``name`` with ``ClassifyArgs(image, top_k)``; BrokerUnavailable on failure."""
    try:
        celery.send_task(
            name, args=ClassifyArgs(image, top_k), task_id=task_id, expires=expires,
            argsrepr=f"<image {len(image)} bytes>, top_k={top_k}")
    except _BROKER_ERRORS as exc:
        logger.warning("Could not send task %s (%s): %s", task_id, name, exc)
        raise BrokerUnavailable(
            "the task queue is unreachable; try again shortly", retry_after) from exc


def _send(app: Flask, image: bytes, top_k: int, task_id: str) -> None:
    config = app.config
    name = task_name(batch=config["USE_BATCH_PROCESSING"])
    send(app.extensions["celery"], name, image, top_k, task_id=task_id,
         expires=config["RESULT_TIMEOUT"], retry_after=config["BROKER_RETRY_AFTER"])


def submit(app: Flask, image: bytes, top_k: int) -> str:
    """Send a classify task without waiting; return its id."""
    task_id = str(uuid.uuid4())
    _send(app, image, top_k, task_id)
    return task_id


def classify(app: Flask, image: bytes, top_k: int) -> Outcome:
    """Send a classify task and wait up to RESULT_TIMEOUT for its result."""
    waiter: ResultWaiter = app.extensions["result_waiter"]
    task_id = str(uuid.uuid4())
    # Registered before sending, so a fast result cannot slip past.
    with waiter.expecting(task_id):
        sent_at = time.time()
        _send(app, image, top_k, task_id)
        meta = waiter.wait(task_id, app.config["RESULT_TIMEOUT"])
    return Outcome(task_id, sent_at, meta)


def status(app: Flask, task_id: str) -> dict[str, Any] | None:
    """Return the stored meta of ``task_id``, or None while nothing is stored."""
    waiter: ResultWaiter = app.extensions["result_waiter"]
    try:
        return waiter.fetch(task_id)
    except RedisError as exc:
        logger.warning("Could not read the result of task %s: %s", task_id, exc)
        raise BrokerUnavailable(
            "the result store is unreachable; try again shortly",
            app.config["BROKER_RETRY_AFTER"]) from exc


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
