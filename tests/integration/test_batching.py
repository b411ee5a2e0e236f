"""The batching consumer in a real worker process against real Redis, one worker for the module."""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from celery import Celery
from celery.exceptions import TaskRevokedError
from celery.result import AsyncResult

from deploy.stack import wait_until
from tests.support.worker import client_app, start_batch_app


@pytest.fixture(scope="module")
def app(module_redis: redis.Redis, redis_url: str) -> Celery:
    return client_app(redis_url)


def send(app: Celery, values: list[str], **options: Any) -> list[AsyncResult]:
    return [app.send_task("t.echo", (value,), **options) for value in values]


@pytest.fixture(scope="module")
def backlog(app: Celery, redis_url: str) -> Iterator[list[AsyncResult]]:
    """Eight requests queued before the module's worker (batches of 8, 1.5 s deadline) starts."""
    # Prefetch multiplier 1 x concurrency 2 would cap every batch at 2 (celery-batches #17, #73):
    # the consumer raises the window to two batches.
    pending = send(app, [f"v{i}" for i in range(8)])
    env = {"FLUSH_EVERY": "8", "FLUSH_INTERVAL": "1.5", "WORKER_PREFETCH_MULTIPLIER": "1"}
    with start_batch_app(app, redis_url, **env):
        yield pending


def test_a_full_batch_goes_at_once_and_a_partial_one_waits_for_its_deadline(
        app: Celery, backlog: list[AsyncResult]) -> None:
    results = [r.get(timeout=20) for r in backlog]
    assert [(r["value"], r["decoded"], r["batch_size"]) for r in results] == [
        (f"v{i}", f"decoded:v{i}", 8) for i in range(8)]
    sent_at = time.time()
    partial = [r.get(timeout=20) for r in send(app, ["a", "b"])]
    assert [r["batch_size"] for r in partial] == [2, 2]
    assert partial[0]["ran_at"] - sent_at >= 1.5  # the oldest request waited its deadline


def test_one_bad_input_fails_alone_and_every_request_emits_its_own_task_events(
        app: Celery, backlog: list[AsyncResult]) -> None:
    seen: dict[str, set[str]] = defaultdict(set)
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": lambda e: seen[e.get("uuid", "")].add(e["type"])})
        listener = threading.Thread(target=receiver.capture, daemon=True,
                                    kwargs={"limit": None, "timeout": None, "wakeup": False})
        listener.start()  # until should_stop
        # Subscribed once it hears the running worker's heartbeat (every 2 s).
        wait_until(lambda: None if "worker-heartbeat" in seen[""] else "no heartbeat yet", 10, interval=0.05)
        results = send(app, ["a", "poison", "b", "bad-decode"])
        for result in results:
            result.get(timeout=20, propagate=False)
        expected = {r.id: "task-succeeded" if r.state == "SUCCESS" else "task-failed" for r in results}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
                final in seen[task_id] for task_id, final in expected.items()):
            time.sleep(0.05)  # polling the listener's record, not standing in for a signal
        receiver.should_stop = True
        listener.join(10)
    assert [r.state for r in results] == ["SUCCESS", "FAILURE", "SUCCESS", "FAILURE"]
    assert "poison in batch" in str(results[1].result) and "cannot decode" in str(results[3].result)
    assert results[0].result["value"] == "a" and results[2].result["value"] == "b"
    for task_id, final in expected.items():
        assert {"task-received", "task-started", final} <= seen[task_id], (task_id, seen[task_id])


def test_expired_requests_are_dropped_before_running(app: Celery, module_redis: redis.Redis,
                                                     backlog: list[AsyncResult]) -> None:
    blocker = send(app, ["gate"])[0]
    module_redis.blpop(["started"], timeout=20)  # the model is now busy
    expires_at = time.time() + 0.5
    doomed = send(app, ["late"], expires=datetime.fromtimestamp(expires_at, UTC))[0]
    while time.time() < expires_at:  # the behaviour under test is the clock itself
        time.sleep(expires_at - time.time())
    module_redis.rpush("gate", 1)
    assert blocker.get(timeout=20)["value"] == "gate"
    with pytest.raises(TaskRevokedError):
        doomed.get(timeout=20)
    assert doomed.state == "REVOKED"
