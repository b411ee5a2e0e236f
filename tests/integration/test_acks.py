"""Exactly one acknowledgement per delivery: batched and single tasks, early and late acks, through
each broker. A second ``acknowledge()`` is harmless to Celery's own Request, but a subclass that
is not idempotent would ack a delivery tag twice (on RabbitMQ a channel error). The worker runs
``ack_app``; its Request records every ``acknowledge()`` on the Redis list ``acked``."""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from celery import Celery
from celery.worker.request import Request

from batching import BatchAPI, SimpleRequest, batch_task
from tests.support.brokers import client_for
from tests.support.worker import WorkerProcess

ack_app = Celery("acks")
ack_app.config_from_object("celeryconfig")
QUEUE = "acks"


class CountingRequest(Request):
    """Records each call, as celery-batches' own tests observe acknowledgements."""

    def acknowledge(self) -> None:
        redis.Redis.from_url(ack_app.conf.result_backend).rpush("acked", self.id)
        super().acknowledge()


class Echo(BatchAPI):
    def predict(self, batch: list[Any]) -> list[Any]:
        return batch

    def encode_response(self, output: Any, request: SimpleRequest) -> Any:
        return output


def echo(value: Any) -> Any:
    return value


for late in (False, True):
    batch_task(ack_app, Echo(), name=f"a.batch-{late}", flush_every=4, flush_interval=0.1, acks_late=late,
               Request=CountingRequest)
    ack_app.task(echo, name=f"a.one-{late}", acks_late=late, Request=CountingRequest)
ack_app.task(echo, name="a.ping")


@pytest.fixture(scope="module")
def app(broker_url: str, redis_url: str, module_redis: redis.Redis) -> Iterator[Celery]:
    argv = ["-m", "celery", "-A", "tests.integration.test_acks:ack_app", "worker", "--pool=threads",
            "--concurrency=2", "--without-mingle", "--without-gossip", "-n", f"acks-{broker_url[:4]}@%h"]
    client = client_for(broker_url, redis_url, QUEUE)
    with WorkerProcess(argv, redis_url, CELERY_BROKER_URL=broker_url, CELERY_QUEUE=QUEUE) as worker:
        worker.start()
        client.send_task("a.ping", ("pong",)).get(timeout=90)
        yield client


def wait_idle(app: Celery, timeout: float = 30) -> None:
    """Until the worker reports no task active or reserved: each one's acknowledgement is made."""
    deadline = time.monotonic() + timeout
    while True:
        inspect = app.control.inspect(timeout=1.0)
        replies = [inspect.active() or {}, inspect.reserved() or {}]
        if all(reply and all(tasks == [] for tasks in reply.values()) for reply in replies):
            return
        assert time.monotonic() < deadline, f"the worker stayed busy: {replies}"


@pytest.mark.parametrize("late", [False, True])
@pytest.mark.parametrize("kind", ["batch", "one"])
def test_each_delivery_is_acknowledged_once(app: Celery, module_redis: redis.Redis, kind: str,
                                            late: bool) -> None:
    module_redis.delete("acked")
    sent = [app.send_task(f"a.{kind}-{late}", (n,)) for n in range(10)]
    assert [r.get(timeout=60) for r in sent] == list(range(10))
    wait_idle(app)  # a late ack, or a second one, follows the stored result
    acks: Counter[str] = Counter(item.decode() for item in module_redis.lrange("acked", 0, -1))  # type: ignore[union-attr]
    assert {r.id: acks[r.id] for r in sent} == {r.id: 1 for r in sent}
