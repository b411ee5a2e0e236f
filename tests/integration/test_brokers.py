"""The real worker through each broker, Redis and RabbitMQ (results on Redis with either), SIGKILLs
included: RabbitMQ hands a dead consumer's deliveries back at once, the project's Redis transport
within seconds (common.redis_transport). The crash tests' workers run ``gate_app``: a batch holding ``"gate"``
blocks in ``predict`` until the test pushes to the Redis list ``gate``, and every request it
completes is appended to the list ``ran``.
"""
from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from celery import Celery
from celery.result import AsyncResult

from batching import BatchAPI, SimpleRequest, batch_task
from common.config import value
from common.contract import CLASSIFY_BATCH_TASK, CLASSIFY_TASK, PING_TASK
from loadtest.chaos import StoreCounter
from tests.support.brokers import client_for, ready_messages
from tests.support.photos import CAT_CLASSES, COFFEE_CLASSES, distinct_photos
from tests.support.worker import WorkerProcess

PHOTOS = distinct_photos(8)  # chelsea, coffee, ... then their crops

gate_app = Celery("broker_gate")
gate_app.config_from_object("celeryconfig")


def _redis(url: str | None = None) -> redis.Redis:
    """A client whose blocking reads wait as long as the command asks (no socket timeout)."""
    return redis.Redis.from_url(url or gate_app.conf.result_backend, socket_timeout=None)


class _Gate(BatchAPI):
    def predict(self, batch: list[Any]) -> list[Any]:
        if "gate" in batch:
            _redis().rpush("started", len(batch))
            _redis().blpop(["gate"], timeout=120)
        return batch

    def encode_response(self, output: Any, request: SimpleRequest) -> dict[str, Any]:
        _redis().rpush("ran", output)
        return {"value": output}


@gate_app.task(name="g.ping")
def _ping() -> str:
    return "pong"


# Production batching: BATCH_SIZE and BATCH_TIMEOUT's defaults.
batch_task(gate_app, _Gate(), name="g.echo", flush_every=value("BATCH_SIZE", {}),
           flush_interval=value("BATCH_TIMEOUT", {}))
GATE_WORKER = ["-m", "celery", "-A", "tests.integration.test_brokers:gate_app", "worker", "--pool=threads",
               "--concurrency=2", "--loglevel=INFO", "--without-mingle", "--without-gossip"]


def _start(argv: list[str], broker_url: str, redis_url: str, queue: str, ping: str = "g.ping",
           **env: str) -> tuple[Celery, WorkerProcess]:
    app = client_for(broker_url, redis_url, queue)
    worker = WorkerProcess(argv, redis_url, CELERY_BROKER_URL=broker_url, CELERY_QUEUE=queue, **env).start()
    try:
        worker.wait_ready(app, ping)
    except BaseException:
        worker.stop()
        raise
    return app, worker


@pytest.fixture(scope="module")
def individual(broker_url: str, redis_url: str, module_redis: redis.Redis) -> Iterator[Celery]:
    # Node names differ: RabbitMQ lets one connection hold a node's (exclusive) control queue.
    argv = ["-m", "workers", "-n", "individual@%h"]
    app, worker = _start(argv, broker_url, redis_url, "brokers-individual", PING_TASK)
    with worker:
        yield app


@pytest.fixture(scope="module")
def batch(broker_url: str, redis_url: str, module_redis: redis.Redis) -> Iterator[Celery]:
    argv = ["-m", "workers", "--batch", "-n", "batch@%h"]
    app, worker = _start(argv, broker_url, redis_url, "brokers-batch", PING_TASK, BATCH_SIZE="4")
    with worker:
        yield app


def test_individual_mode_classifies_real_photos(individual: Celery) -> None:
    answers = [r.get(timeout=120) for r in [individual.send_task(CLASSIFY_TASK, (p, 3)) for p in PHOTOS]]
    assert answers[0]["predictions"][0]["class_id"] in CAT_CLASSES  # chelsea
    assert answers[1]["predictions"][0]["class_id"] in COFFEE_CLASSES  # coffee
    shapes = [(a["mode"], a["batch_size"], len(a["predictions"])) for a in answers]
    assert shapes == [("individual", 1, 3)] * 8


def test_batch_mode_classifies_real_photos_in_real_batches(batch: Celery) -> None:
    with ThreadPoolExecutor(8) as pool:  # 8 clients at once
        sent = list(pool.map(lambda photo: batch.send_task(CLASSIFY_BATCH_TASK, (photo, 3)), PHOTOS))
    answers = [r.get(timeout=120) for r in sent]
    assert answers[0]["predictions"][0]["class_id"] in CAT_CLASSES
    assert answers[1]["predictions"][0]["class_id"] in COFFEE_CLASSES
    assert {a["mode"] for a in answers} == {"batch"} and max(a["batch_size"] for a in answers) > 1
    assert len({a["batch_id"] for a in answers}) < len(answers)  # grouped


def test_a_bad_image_fails_alone(individual: Celery) -> None:
    bad = individual.send_task(CLASSIFY_TASK, (b"\x89PNG\r\n\x1a\n not really", 3))
    good = individual.send_task(CLASSIFY_TASK, (PHOTOS[0], 3))
    bad.get(timeout=60, propagate=False)
    assert bad.state == "FAILURE" and type(bad.result).__name__ == "InvalidImageError"
    assert good.get(timeout=60)["predictions"][0]["class_id"] in CAT_CLASSES


def test_rabbitmq_task_queues_are_quorum_queues(
        broker_url: str, amqp_url: str, individual: Celery, batch: Celery) -> None:
    if broker_url != amqp_url:
        pytest.skip("a RabbitMQ check")
    vhost = amqp_url.rsplit("/", 1)[1] or "/"
    listed = subprocess.run(["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "type"],
                            check=True, capture_output=True, text=True, timeout=60).stdout
    types = dict(line.split("\t")[:2] for line in listed.splitlines() if "\t" in line)
    assert (types.get("brokers-individual"), types.get("brokers-batch")) == ("quorum", "quorum"), types


def _values(results: list[AsyncResult], worker: WorkerProcess) -> list[Any]:
    try:
        return [r.get(timeout=60)["value"] for r in results]
    except Exception:
        raise AssertionError(f"states {Counter(r.state for r in results)}\n{worker.log()[-3000:]}") from None


def test_sigkill_mid_batch_loses_nothing(broker_url: str, redis_url: str, module_redis: redis.Redis) -> None:
    # Neither broker waits out a visibility timeout, nor has a window in which a message is in
    # nobody's hands.
    queue, client, values = "brokers-crash", _redis(redis_url), ["gate"] + [f"v{i}" for i in range(7)]
    client.delete("ran", "gate", "started")  # the other broker's run left its own
    app, first = _start([*GATE_WORKER, "-n", "first@%h"], broker_url, redis_url, queue)
    with first:
        results = [app.send_task("g.echo", (v,)) for v in values]
        assert client.blpop(["started"], timeout=60), first.log()[-3000:]  # a batch is inside predict()
        deadline = time.monotonic() + 30
        while ready_messages(app, queue) and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the broker until the worker holds every message
        assert ready_messages(app, queue) == 0
        first.signal(signal.SIGKILL)
        first.wait(30)
        done_before = [r.id for r in results if r.ready()]
    client.rpush("gate", *[1] * len(values))  # redelivered gate requests must not block
    app, second = _start([*GATE_WORKER, "-n", "second@%h"], broker_url, redis_url, queue)
    with second:
        assert _values(results, second) == values
    # Each request ran to completion once: the killed batch's never stored a result.
    ran = client.lrange("ran", 0, -1)
    assert sorted(x.decode() if isinstance(x, bytes) else x for x in ran) == sorted(values)
    assert len(done_before) < len(values)
    assert all(AsyncResult(r.id, app=app).state == "SUCCESS" for r in results)


def test_repeated_sigkills_at_random_moments_lose_nothing(
        broker_url: str, redis_url: str, module_redis: redis.Redis) -> None:
    # Three workers in turn, each SIGKILLed at a random moment while a client keeps sending; a
    # fourth finishes. Every request must end SUCCESS, its result stored once.
    queue, rng = "brokers-kills", random.Random(5)
    app, sent, stop = client_for(broker_url, redis_url, queue), list[AsyncResult](), threading.Event()

    def client() -> None:
        while not stop.wait(0.02):
            sent.append(app.send_task("g.echo", (f"k{len(sent)}",)))

    sender = threading.Thread(target=client, daemon=True)
    stores = StoreCounter(module_redis).start()
    try:
        sender.start()
        for kill in range(3):
            _, worker = _start([*GATE_WORKER, "-n", f"kill{kill}@%h"], broker_url, redis_url, queue)
            with worker:
                time.sleep(rng.uniform(0.1, 2.0))  # the fault's random moment, under load
                worker.signal(signal.SIGKILL)
                worker.wait(30)
        stop.set()
        sender.join(10)
        _, last = _start([*GATE_WORKER, "-n", "last@%h"], broker_url, redis_url, queue)
        with last:
            values = _values(sent, last)
    finally:
        stop.set()
        stores.close()
    assert values == [f"k{i}" for i in range(len(sent))]
    assert len(sent) > 50 and stores.twice() == []
    assert all(stores.counts[r.id] == 1 for r in sent)
