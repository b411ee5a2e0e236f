"""Sending by name and mapping a result's meta to a response or an error."""
from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from kombu.exceptions import OperationalError

from webapp import dispatch
from webapp.exceptions import BrokerUnavailable, InvalidImage, TaskExpired, WorkerFailure


class RecordingCelery:
    """Has the one method ``send`` uses."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.error = error

    def send_task(self, name: str, **options: Any) -> None:
        if self.error is not None:
            raise self.error
        self.calls.append((name, options))


def test_send_by_name_with_positional_args_expires_and_argsrepr() -> None:
    celery = RecordingCelery()
    dispatch.send(celery, "workers.classify", b"\x89PNG...", 3,
                  task_id="t1", expires=30.0, retry_after=5)
    [(name, options)] = celery.calls
    assert name == "workers.classify"
    assert options == {"args": (b"\x89PNG...", 3), "task_id": "t1", "expires": 30.0,
                       "argsrepr": "<image 7 bytes>, top_k=3"}


@pytest.mark.parametrize("error", [OperationalError("down"), RedisConnectionError("down"),
                                   ConnectionRefusedError(111, "refused")])
def test_send_maps_broker_errors(error: Exception) -> None:
    with pytest.raises(BrokerUnavailable) as raised:
        dispatch.send(RecordingCelery(error), "workers.classify", b"x", 1,
                      task_id="t1", expires=30.0, retry_after=7)
    assert raised.value.headers() == {"Retry-After": "7"}


def test_success_returns_result() -> None:
    meta = {"status": "SUCCESS", "result": {"prediction": "cat"}}
    assert dispatch.result_or_raise(meta) == {"prediction": "cat"}


@pytest.mark.parametrize(
    ("meta", "error", "message"),
    [
        ({"status": "FAILURE", "result": {"exc_type": "InvalidImageError", "exc_message": ["truncated"]}},
         InvalidImage, "truncated"),
        ({"status": "FAILURE", "result": {"exc_type": "InvalidImageError", "exc_message": []}},
         InvalidImage, "cannot be decoded"),
        ({"status": "FAILURE", "result": {"exc_type": "SoftTimeLimitExceeded", "exc_message": ["30"]}},
         WorkerFailure, "SoftTimeLimitExceeded: 30"),
        ({"status": "FAILURE", "result": "not a dict"}, WorkerFailure, "error"),
        ({"status": "REVOKED", "result": None}, TaskExpired, "expired"),
        ({"status": "STARTED", "result": None}, WorkerFailure, "STARTED"),
    ],
)
def test_failures_map_to_errors(meta: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        dispatch.result_or_raise(meta)
