"""Worker faults at production settings: real Redis, real worker processes.

Nothing here shortens ``BROKER_VISIBILITY_TIMEOUT`` or ``BROKER_RESTORE_INTERVAL``: a message a
dead or frozen worker held comes back once unacknowledged for the visibility timeout, so the
SIGSTOP test freezes the worker once every message is recorded as unacknowledged, then polls.
SIGKILLs at random moments are ``make chaos``'s (kombu loses a message popped but not yet
recorded; docs/reliability.md). Each result is written once: a pattern subscription counts the
result backend's stores per task.
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
from tests.support.photos import distinct_photos
from tests.support.worker import WorkerProcess, client_app
from workers.watchdog import EXIT_CODE

PHOTOS = distinct_photos(8)
#: Longer than one visibility timeout plus one restore interval, plus the work itself.
REDELIVERY_WAIT = 120
BATCH_APP = ["-m", "celery", "-A", "tests.integration.batch_app", "worker", "--pool=threads",
             "--concurrency=2", "--task-events", "--loglevel=INFO", "--without-mingle", "--without-gossip"]


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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(r.ready() for r in results):
        time.sleep(0.5)  # polling the result backend with a deadline
    states = [r.state for r in results]
    assert all(r.ready() for r in results), f"states {Counter(states)}\n{worker.log()[-3000:]}"
    return states


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
    with WorkerProcess(["-m", "workers", "--batch"], redis_url) as first:
        wait_reserved(clean_redis, 8, first)
        first.signal(signal.SIGTERM)
        assert first.wait(60) == 0, first.log()[-3000:]
    with WorkerProcess(["-m", "workers", "--batch"], redis_url) as second:
        assert wait_for(sent, 120, second) == ["SUCCESS"] * len(sent)
    assert [stores[r.id] for r in sent] == [1] * len(sent)
    assert clean_redis.keys(image_key("*")) == []


def test_a_hung_forward_pass_ends_the_worker(app: Celery, redis_url: str, clean_redis: redis.Redis) -> None:
    with WorkerProcess(BATCH_APP, redis_url, FLUSH_EVERY="1", FORWARD_TIMEOUT="2") as worker:
        worker.wait_ready(app, "t.ping")
        app.send_task("t.echo", ("hang",))
        assert clean_redis.blpop(["started"], timeout=30) is not None
        assert worker.wait(60) == EXIT_CODE
        assert "the forward pass is hung" in worker.log()


def test_a_frozen_workers_batch_comes_back_to_the_other_worker(
        app: Celery, redis_url: str, clean_redis: redis.Redis, stores: Counter[str]) -> None:
    env = {"FLUSH_EVERY": "4", "FLUSH_INTERVAL": "0.2"}
    frozen = WorkerProcess(BATCH_APP, redis_url, **env).start()
    try:
        frozen.wait_ready(app, "t.ping")
        sent = [app.send_task("t.echo", (value,)) for value in ["gate", *(f"v{i}" for i in range(7))]]
        assert clean_redis.blpop(["started"], timeout=30) is not None  # a batch is inside predict
        wait_reserved(clean_redis, len(sent), frozen)
        frozen.signal(signal.SIGSTOP)
        clean_redis.rpush("gate", 1, 1)  # one for the frozen worker's pending BLPOP, one for the redelivery
        with WorkerProcess(BATCH_APP, redis_url, **env) as other:
            other.wait_ready(app, "t.ping")
            assert wait_for(sent, REDELIVERY_WAIT, other) == ["SUCCESS"] * len(sent)
            other_pid = other.pid
    finally:
        frozen.signal(signal.SIGKILL)  # a stopped process cannot act on SIGTERM
        frozen.signal(signal.SIGCONT)
        frozen.wait(30)
    assert {AsyncResult(r.id, app=app).result["pid"] for r in sent} == {other_pid}
    assert [stores[r.id] for r in sent] == [1] * len(sent)
