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

from batching import BatchAPI, SimpleRequest, batch_task
from batching.trace import apply_batch
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


def test_full_batch_is_dispatched_at_once(app: Celery, redis_url: str) -> None:
    # flush_interval is 30 s: a result within 20 s means the size alone triggered it.
    with start_worker(app, redis_url, FLUSH_EVERY="4", FLUSH_INTERVAL="30"):
        results = [r.get(timeout=20) for r in send(app, [f"v{i}" for i in range(8)])]
    assert [r["value"] for r in results] == [f"v{i}" for i in range(8)]
    assert [r["batch_size"] for r in results] == [4] * 8
    assert [r["decoded"] for r in results] == [f"decoded:v{i}" for i in range(8)]


def test_partial_batch_waits_for_its_deadline(app: Celery, redis_url: str) -> None:
    with start_worker(app, redis_url, FLUSH_EVERY="4", FLUSH_INTERVAL="1.0"):
        sent_at = time.time()
        results = [r.get(timeout=20) for r in send(app, ["a", "b"])]
    assert [r["batch_size"] for r in results] == [2, 2]
    # The oldest request waited its deadline before the partial batch ran.
    assert results[0]["ran_at"] - sent_at >= 1.0


def test_one_bad_input_fails_alone(app: Celery, redis_url: str) -> None:
    with start_worker(app, redis_url, FLUSH_EVERY="4", FLUSH_INTERVAL="0.2"):
        results = send(app, ["a", "poison", "b", "bad-decode"])
        for result in results:
            result.get(timeout=20, propagate=False)
    states = {r.args[0] if r.args else None: r.state for r in results}
    assert [r.state for r in results] == ["SUCCESS", "FAILURE", "SUCCESS", "FAILURE"], states
    assert "poison in batch" in str(results[1].result)
    assert "cannot decode" in str(results[3].result)
    assert results[0].result["value"] == "a" and results[2].result["value"] == "b"


def test_prefetch_window_lets_batches_fill(app: Celery, redis_url: str) -> None:
    # Prefetch multiplier 1 x concurrency 2 would cap every batch at 2
    # (celery-batches #17, #73); the consumer raises it to two batches.
    pending = send(app, [f"v{i}" for i in range(8)])  # queued before the worker starts
    with start_worker(app, redis_url, FLUSH_EVERY="8", FLUSH_INTERVAL="30",
                      WORKER_PREFETCH_MULTIPLIER="1"):
        sizes = [r.get(timeout=20)["batch_size"] for r in pending]
    assert sizes == [8] * 8


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


def test_every_request_emits_its_own_task_events(app: Celery, redis_url: str) -> None:
    seen: dict[str, set[str]] = defaultdict(set)
    ready = threading.Event()
    receivers: list[Any] = []

    def capture() -> None:
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(conn, handlers={
                "*": lambda event: seen[event.get("uuid", "")].add(event["type"])})
            receivers.append(receiver)
            ready.set()
            receiver.capture(limit=None, timeout=None, wakeup=False)  # until should_stop

    listener = threading.Thread(target=capture, daemon=True)
    listener.start()
    assert ready.wait(10)
    with start_worker(app, redis_url, FLUSH_EVERY="3", FLUSH_INTERVAL="0.2"):
        results = send(app, ["a", "poison", "c"])
        for result in results:
            result.get(timeout=20, propagate=False)
        expected = {results[0].id: "task-succeeded", results[1].id: "task-failed",
                    results[2].id: "task-succeeded"}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(
                final in seen[task_id] for task_id, final in expected.items()):
            time.sleep(0.05)  # polling the listener's record, not standing in for a signal
    receivers[0].should_stop = True
    listener.join(10)
    for task_id, final in expected.items():
        assert {"task-received", "task-started", final} <= seen[task_id], (task_id, seen[task_id])


def _gate_then(app: Celery, redis_url: str, clean_redis: redis.Redis, signum: int) -> None:
    """Stop the worker mid-batch with ``signum``; a fresh worker must finish every request.

    Production's visibility timeout and restore interval: after a SIGKILL the
    messages come back once unacknowledged for 60 s (SIGTERM gives them back
    at once), so the second worker may wait up to ``REDELIVERY_WAIT``.
    """
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


@pytest.mark.timeout(REDELIVERY_WAIT + 120)
def test_sigkill_mid_batch_loses_nothing(app: Celery, redis_url: str, clean_redis: redis.Redis) -> None:
    _gate_then(app, redis_url, clean_redis, signal.SIGKILL)


def test_sigterm_loses_nothing(app: Celery, redis_url: str, clean_redis: redis.Redis) -> None:
    _gate_then(app, redis_url, clean_redis, signal.SIGTERM)



class Doubler(BatchAPI):
    def predict(self, batch: list[Any]) -> list[Any]:
        return [{"twice": value * 2} for value in batch]


def test_a_batchs_results_are_stored_at_once_as_mark_as_done_stores_each(
        app: Celery, clean_redis: redis.Redis) -> None:
    task = batch_task(app, Doubler(), name="t.doubler")
    backend = task.backend
    requests = [SimpleRequest.eager(task.name, (value,), {}, {}) for value in (1, 2, 3)]
    # A lost worker's duplicate: its SUCCESS is already stored and must stay as it is.
    backend.mark_as_done(requests[0].id, {"twice": "first"}, request=requests[0])
    # What Celery itself stores for the same values, one by one.
    one_by_one = [SimpleRequest.eager(task.name, (value,), {}, {}) for value in (2, 3)]
    for request in one_by_one:
        backend.mark_as_done(request.id, {"twice": request.args[0] * 2}, request=request)

    outcome = apply_batch(task, requests)

    assert [o.state for o in outcome.outcomes] == ["SUCCESS"] * 3
    assert AsyncResult(requests[0].id, app=app).result == {"twice": "first"}
    for ours, celerys in zip(requests[1:], one_by_one, strict=True):
        mine, theirs = backend.get_task_meta(ours.id), backend.get_task_meta(celerys.id)
        for meta in (mine, theirs):
            del meta["task_id"], meta["date_done"]
        assert mine == theirs and mine["result"] == {"twice": ours.args[0] * 2}
        key, reference = backend.get_key_for_task(ours.id), backend.get_key_for_task(celerys.id)
        assert abs(clean_redis.ttl(key) - clean_redis.ttl(reference)) <= 1 and clean_redis.ttl(key) > 0
