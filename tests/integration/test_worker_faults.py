"""Worker faults at production settings (heartbeat, visibility timeout and restore interval unchanged):
real Redis, real worker processes. A message a frozen (or killed) worker held comes back once its
heartbeat has been silent ``BROKER_DEAD_CONSUMER_SECONDS``, the visibility timeout the backstop;
SIGKILLs are tests/integration/test_brokers.py's and ``make chaos``'s (docs/reliability.md).
Each result is written once: a pattern subscription counts the result backend's stores per task.
"""
from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from celery import Celery
from celery.result import AsyncResult
from kombu.utils.uuid import uuid

from common.contract import CLASSIFY_BATCH_TASK
from common.image_store import ImageStore, image_key
from deploy.stack import wait_until
from tests.support.photos import distinct_photos
from tests.support.worker import WorkerProcess, client_app, start_batch_app
from workers.watchdog import EXIT_CODE

PHOTOS = distinct_photos(8)
#: Longer than one visibility timeout plus one restore interval, plus the work itself.
REDELIVERY_WAIT = 120


@pytest.fixture
def app(clean_redis: redis.Redis, redis_url: str) -> Celery:
    return client_app(redis_url)


@pytest.fixture
def stores(clean_redis: redis.Redis) -> Iterator[Counter[str]]:
    """Task id -> how many times its result was stored (the backend publishes each store)."""
    counts: Counter[str] = Counter()
    pubsub = clean_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("celery-task-meta-*")
    stop = threading.Event()

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message is not None:
                counts[message["channel"].decode().removeprefix("celery-task-meta-")] += 1

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    yield counts
    stop.set()
    listener.join(5)
    pubsub.close()


def wait_for(results: list[AsyncResult], timeout: float, worker: WorkerProcess) -> list[str]:
    """Poll until every result is in a ready state; their states."""
    wait_until(lambda: None if all(r.ready() for r in results) else
               f"states {Counter(r.state for r in results)}\n{worker.log()[-3000:]}", timeout, interval=0.5)
    return [r.state for r in results]


def wait_reserved(redis_client: redis.Redis, count: int, worker: WorkerProcess, timeout: float = 120) -> None:
    """Until ``count`` messages are unacknowledged (reserved by a worker)."""
    deadline = time.monotonic() + timeout
    while redis_client.hlen("unacked") < count:
        assert worker.exited() is None, worker.exited()
        assert time.monotonic() < deadline, f"never reserved {count}\n{worker.log()[-3000:]}"
        time.sleep(0.05)  # polling Redis: there is nothing to block on


def test_sigterm_drains_and_a_second_worker_finishes_the_rest(
        app: Celery, redis_url: str, clean_redis: redis.Redis, stores: Counter[str]) -> None:
    # Half the images in their messages, half stored beside the queue, as the web app sends them.
    images = ImageStore(clean_redis)
    sent = []
    for index, image in enumerate(PHOTOS * 3):
        task_id = uuid()
        if index % 2:
            images.put(task_id, image, seconds_to_deadline=300)
        sent.append(app.send_task(CLASSIFY_BATCH_TASK, (None if index % 2 else image, 3), task_id=task_id))
    slow = {"MODEL": "simulated", "SIMULATED_BATCH_MS": "300"}  # no weights to load; work left to drain
    with WorkerProcess(["-m", "workers", "--batch"], redis_url, **slow) as first:
        wait_reserved(clean_redis, 8, first)
        first.signal(signal.SIGTERM)
        assert first.wait(60) == 0, first.log()[-3000:]
    with WorkerProcess(["-m", "workers", "--batch"], redis_url, **slow) as second:
        assert wait_for(sent, 120, second) == ["SUCCESS"] * len(sent)
    assert [stores[r.id] for r in sent] == [1] * len(sent)
    assert clean_redis.keys(image_key("*")) == []


def test_a_hung_forward_pass_ends_the_worker(app: Celery, redis_url: str, clean_redis: redis.Redis) -> None:
    with start_batch_app(app, redis_url, FLUSH_EVERY="1", FORWARD_TIMEOUT="2") as worker:
        app.send_task("t.echo", ("hang",))
        assert clean_redis.blpop(["started"], timeout=30) is not None
        assert worker.wait(60) == EXIT_CODE
        assert "the forward pass is hung" in worker.log()


@pytest.mark.timeout(REDELIVERY_WAIT + 120)
def test_sigterm_mid_batch_finishes_it_and_the_next_worker_takes_the_rest(
        app: Celery, redis_url: str, clean_redis: redis.Redis, stores: Counter[str]) -> None:
    env = {"FLUSH_EVERY": "4", "FLUSH_INTERVAL": "0.2"}
    with start_batch_app(app, redis_url, **env) as first:
        sent = [app.send_task("t.echo", (value,)) for value in ["gate", *(f"v{i}" for i in range(7))]]
        assert clean_redis.blpop(["started"], timeout=30) is not None  # a batch is inside predict
        wait_reserved(clean_redis, len(sent), first)
        first.signal(signal.SIGTERM)
        clean_redis.rpush("gate", 1)  # the running batch finishes during the warm shutdown
        assert first.wait(60) == 0, first.log()[-3000:]
    clean_redis.rpush("gate", *[1] * 8)  # a redelivered gate request must not block
    with start_batch_app(app, redis_url, **env) as second:
        assert wait_for(sent, REDELIVERY_WAIT, second) == ["SUCCESS"] * len(sent)
    assert [stores[r.id] for r in sent] == [1] * len(sent)


def test_a_frozen_workers_batch_comes_back_to_the_other_worker(
        app: Celery, redis_url: str, clean_redis: redis.Redis, stores: Counter[str]) -> None:
    env = {"FLUSH_EVERY": "4", "FLUSH_INTERVAL": "0.2"}
    frozen = start_batch_app(app, redis_url, **env)
    try:
        sent = [app.send_task("t.echo", (value,)) for value in ["gate", *(f"v{i}" for i in range(7))]]
        assert clean_redis.blpop(["started"], timeout=30) is not None  # a batch is inside predict
        wait_reserved(clean_redis, len(sent), frozen)
        frozen.signal(signal.SIGSTOP)
        clean_redis.rpush("gate", 1, 1)  # one for the frozen worker's pending BLPOP, one for the redelivery
        with start_batch_app(app, redis_url, **env) as other:
            assert wait_for(sent, REDELIVERY_WAIT, other) == ["SUCCESS"] * len(sent)
            other_pid = other.pid
    finally:
        frozen.signal(signal.SIGKILL)  # a stopped process cannot act on SIGTERM
        frozen.signal(signal.SIGCONT)
        frozen.wait(30)
    assert {AsyncResult(r.id, app=app).result["pid"] for r in sent} == {other_pid}
    assert [stores[r.id] for r in sent] == [1] * len(sent)
