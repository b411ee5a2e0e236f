"""The batching consumer in a real worker process against real Redis."""
from __future__ import annotations

import signal
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from celery import Celery
from celery.exceptions import TaskRevokedError
from celery.result import AsyncResult

from common.config import value
from tests.support.worker import WorkerProcess, client_app

#: One visibility timeout plus one restore interval (production's), plus the work itself.
REDELIVERY_WAIT = value("BROKER_VISIBILITY_TIMEOUT", {}) + value("BROKER_RESTORE_INTERVAL", {}) + 50
WORKER = ["-m", "celery", "-A", "tests.integration.batch_app", "worker", "--pool=threads",
          "--concurrency=2", "--task-events", "--loglevel=INFO", "--without-mingle", "--without-gossip"]


@pytest.fixture
def app(clean_redis: redis.Redis, redis_url: str) -> Celery:
    return client_app(redis_url)


def start_worker(app: Celery, redis_url: str, **env: str) -> WorkerProcess:
    worker = WorkerProcess(WORKER, redis_url, **env).start()
    worker.wait_ready(app, "t.ping")
    return worker


def send(app: Celery, values: list[str], **options: Any) -> list[AsyncResult]:
    return [app.send_task("t.echo", (value,), **options) for value in values]


def test_a_full_batch_goes_at_once_and_the_prefetch_window_lets_it_fill(app: Celery, redis_url: str) -> None:
    # Queued before the worker starts. Prefetch multiplier 1 x concurrency 2 would cap every
    # batch at 2 (celery-batches #17, #73): the consumer raises the window to two batches. And
    # flush_interval is 30 s: results within 20 s mean the size alone triggered the batch.
    pending = send(app, [f"v{i}" for i in range(8)])
    with start_worker(app, redis_url, FLUSH_EVERY="8", FLUSH_INTERVAL="30", WORKER_PREFETCH_MULTIPLIER="1"):
        results = [r.get(timeout=20) for r in pending]
    assert [(r["value"], r["decoded"], r["batch_size"]) for r in results] == [
        (f"v{i}", f"decoded:v{i}", 8) for i in range(8)]


def test_partial_batch_waits_for_its_deadline(app: Celery, redis_url: str) -> None:
    with start_worker(app, redis_url, FLUSH_EVERY="4", FLUSH_INTERVAL="1.0"):
        sent_at = time.time()
        results = [r.get(timeout=20) for r in send(app, ["a", "b"])]
    assert [r["batch_size"] for r in results] == [2, 2]
    assert results[0]["ran_at"] - sent_at >= 1.0  # the oldest request waited its deadline


def test_one_bad_input_fails_alone_and_every_request_emits_its_own_task_events(
        app: Celery, redis_url: str) -> None:
    seen: dict[str, set[str]] = defaultdict(set)
    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": lambda e: seen[e.get("uuid", "")].add(e["type"])})
        listener = threading.Thread(target=receiver.capture, daemon=True,
                                    kwargs={"limit": None, "timeout": None, "wakeup": False})
        listener.start()  # until should_stop
        with start_worker(app, redis_url, FLUSH_EVERY="4", FLUSH_INTERVAL="0.2"):
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


def test_expired_requests_are_dropped_before_running(app: Celery, redis_url: str,
                                                     clean_redis: redis.Redis) -> None:
    with start_worker(app, redis_url, FLUSH_EVERY="1", FLUSH_INTERVAL="30"):
        blocker = send(app, ["gate"])[0]
        clean_redis.blpop(["started"], timeout=20)  # the model is now busy
        expires_at = time.time() + 0.5
        doomed = send(app, ["late"], expires=datetime.fromtimestamp(expires_at, UTC))[0]
        while time.time() < expires_at:  # the behaviour under test is the clock itself
            time.sleep(expires_at - time.time())
        clean_redis.rpush("gate", 1)
        assert blocker.get(timeout=20)["value"] == "gate"
        with pytest.raises(TaskRevokedError):
            doomed.get(timeout=20)
    assert doomed.state == "REVOKED"


@pytest.mark.timeout(REDELIVERY_WAIT + 120)
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_worker_stopped_mid_batch_loses_nothing(app: Celery, redis_url: str, clean_redis: redis.Redis,
                                                  signum: int) -> None:
    # A fresh worker finishes every request; after a SIGKILL, once production's visibility
    # timeout has passed (REDELIVERY_WAIT).
    env = {"FLUSH_EVERY": "4", "FLUSH_INTERVAL": "0.2"}
    worker = start_worker(app, redis_url, **env)
    try:
        results = send(app, ["gate"] + [f"v{i}" for i in range(7)])
        clean_redis.blpop(["started"], timeout=20)  # a batch is inside run() now
        # Every message reserved: kombu's Redis transport has a window between BRPOP
        # and recording the message as unacked that no consumer can close (README).
        while clean_redis.hlen("unacked") < len(results):
            time.sleep(0.01)  # polling Redis: there is nothing to block on
        worker.signal(signum)
        if signum == signal.SIGTERM:
            clean_redis.rpush("gate", 1)  # let the running batch finish during warm shutdown
        worker.wait(60)
    finally:
        worker.stop()
    clean_redis.delete("gate")
    clean_redis.rpush("gate", *[1] * 8)  # redelivered gate requests must not block
    with start_worker(app, redis_url, **env) as second:
        try:
            values = [r.get(timeout=REDELIVERY_WAIT)["value"] for r in results]
        except Exception:
            states = [r.state for r in results]
            raise AssertionError(f"states {states}; unacked {clean_redis.hlen('unacked')}; "
                                 f"queued {clean_redis.llen('inference')}\n{second.log()[-3000:]}") from None
    assert values == ["gate"] + [f"v{i}" for i in range(7)]

