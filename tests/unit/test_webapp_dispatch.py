"""Sending by name and mapping a result's meta to a response or an error."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from kombu.exceptions import OperationalError

from common.contract import (
    CLASSIFY_TASK,
    WIRE_ERROR_CODES,
    ClassifyArgs,
    InvalidImageError,
    InvalidMessageError,
)
from webapp import dispatch
from webapp.exceptions import (
    BrokerUnavailable,
    InvalidImage,
    InvalidRequest,
    TaskExpired,
    WebAppError,
    WorkerFailure,
)

#: A request's absolute deadline.
EXPIRES = datetime(2030, 1, 1, tzinfo=timezone.utc)


class RecordingCelery:
    """Has the one method ``send`` uses."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.error = error

    def send_task(self, name: str, **options: Any) -> None:
        if self.error is not None:
            raise self.error
        self.calls.append((name, options))


def test_send_by_name_with_classify_args_expires_and_argsrepr() -> None:
    celery = RecordingCelery()
    dispatch.send(celery, CLASSIFY_TASK, b"\x89PNG...", 3,
                  task_id="t1", queue="q", expires=EXPIRES, retry_after=5)
    [(name, options)] = celery.calls
    assert name == CLASSIFY_TASK
    assert options == {"args": ClassifyArgs(b"\x89PNG...", 3), "task_id": "t1", "queue": "q",
                       "expires": EXPIRES, "argsrepr": "<image 7 bytes>, top_k=3"}
    # A tuple: msgpack sends it as the same positional list as before.
    assert isinstance(options["args"], ClassifyArgs) and options["args"] == (b"\x89PNG...", 3)


@pytest.mark.parametrize("error", [OperationalError("down"), RedisConnectionError("down"),
                                   ConnectionRefusedError(111, "refused")])
def test_send_maps_broker_errors(error: Exception) -> None:
    with pytest.raises(BrokerUnavailable) as raised:
        dispatch.send(RecordingCelery(error), CLASSIFY_TASK, b"x", 1,
                      task_id="t1", queue="q", expires=EXPIRES, retry_after=7)
    assert raised.value.headers() == {"Retry-After": "7"}


def test_success_returns_result() -> None:
    meta = {"status": "SUCCESS", "result": {"prediction": "cat"}}
    assert dispatch.result_or_raise(meta) == {"prediction": "cat"}


def failure(exc_type: str, *message: str) -> dict[str, Any]:
    return {"status": "FAILURE", "result": {"exc_type": exc_type, "exc_message": list(message)}}


@pytest.mark.parametrize(
    ("meta", "error", "message"),
    [
        (failure(InvalidImageError.__name__, "truncated"), InvalidImage, "truncated"),
        (failure(InvalidImageError.__name__), InvalidImage, "cannot be decoded"),
        (failure(InvalidMessageError.__name__, "top_k must be an int"), InvalidRequest, "must be an int"),
        (failure(InvalidMessageError.__name__), InvalidRequest, "arguments"),
        (failure("SoftTimeLimitExceeded", "30"), WorkerFailure, "SoftTimeLimitExceeded: 30"),
        ({"status": "FAILURE", "result": "not a dict"}, WorkerFailure, "error"),
        ({"status": "REVOKED", "result": None}, TaskExpired, "expired"),
        ({"status": "STARTED", "result": None}, WorkerFailure, "STARTED"),
    ],
)
def test_failures_map_to_errors(meta: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        dispatch.result_or_raise(meta)


@pytest.mark.parametrize(("exc_type", "code"), sorted(WIRE_ERROR_CODES.items()))
def test_every_wire_error_is_a_client_error_with_its_code(exc_type: str, code: str) -> None:
    with pytest.raises(WebAppError) as raised:
        dispatch.result_or_raise(failure(exc_type, "bad input"))
    assert (raised.value.status_code, raised.value.code, raised.value.message) == (400, code, "bad input")
