"""Sending by name and mapping a result's meta to a response or an error."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
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
from common.image_store import GRACE_SECONDS, ImageStore, image_key
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
EXPIRES = datetime(2030, 1, 1, tzinfo=UTC)


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
                       "expires": EXPIRES, "argsrepr": "<image 7 bytes>, top_k=3",
                       "kwargsrepr": "{'model': ''}"}
    # A tuple: msgpack sends it as the same positional list as before.
    assert isinstance(options["args"], ClassifyArgs) and options["args"] == (b"\x89PNG...", 3)


@pytest.mark.parametrize("error", [OperationalError("down"), RedisConnectionError("down"),
                                   ConnectionRefusedError(111, "refused")])
def test_send_maps_broker_errors(error: Exception) -> None:
    with pytest.raises(BrokerUnavailable) as raised:
        dispatch.send(RecordingCelery(error), CLASSIFY_TASK, b"x", 1,
                      task_id="t1", queue="q", expires=EXPIRES, retry_after=7)
    assert raised.value.headers() == {"Retry-After": "7"}


class DictRedis:
    """The three commands ``ImageStore`` uses, over a dict: key -> (value, px)."""

    def __init__(self) -> None:
        self.keys: dict[str, tuple[bytes, int]] = {}

    def set(self, key: str, value: bytes, px: int) -> None:
        self.keys[key] = (value, px)

    def get(self, key: str) -> bytes | None:
        return self.keys[key][0] if key in self.keys else None

    def delete(self, *keys: str) -> None:
        for key in keys:
            self.keys.pop(key, None)


def test_send_with_an_image_store_stores_the_image_until_the_deadline_and_sends_none() -> None:
    celery, images = RecordingCelery(), ImageStore(DictRedis())
    expires = datetime.now(UTC) + timedelta(seconds=30)
    dispatch.send(celery, CLASSIFY_TASK, b"\x89PNG...", 3, task_id="t1", queue="q", expires=expires,
                  retry_after=5, images=images)
    [(_, options)] = celery.calls
    assert options["args"] == ClassifyArgs(None, 3) and options["argsrepr"] == "<image 7 bytes>, top_k=3"
    [(key, (value, px))] = images.client.keys.items()
    assert (key, value) == (image_key("t1"), b"\x89PNG...")
    assert (30 + GRACE_SECONDS - 1) * 1000 <= px <= (30 + GRACE_SECONDS) * 1000


def test_an_unsent_tasks_image_is_deleted() -> None:
    images = ImageStore(DictRedis())
    with pytest.raises(BrokerUnavailable):
        dispatch.send(RecordingCelery(OperationalError("down")), CLASSIFY_TASK, b"x", 1, task_id="t1",
                      queue="q", expires=EXPIRES, retry_after=7, images=images)
    assert images.client.keys == {}


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


@pytest.mark.parametrize(("exc_type", "code", "status"), [
    (exc_type, code, 504 if code == "expired" else 400)
    for exc_type, code in sorted(WIRE_ERROR_CODES.items())])
def test_every_wire_error_is_the_requests_error_with_its_code(exc_type: str, code: str, status: int) -> None:
    with pytest.raises(WebAppError) as raised:
        dispatch.result_or_raise(failure(exc_type, "bad input"))
    assert (raised.value.status_code, raised.value.code, raised.value.message) == (status, code, "bad input")
