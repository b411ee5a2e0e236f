"""The Redis transport celeryconfig names for ``redis://`` brokers (common.redis_transport), against a
real Redis: the atomic take, the heartbeat and the reaping of dead consumers, at the production
settings (``consumer_dead_after`` 5 s, the visibility timeout 60 s, never shortened here)."""
from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from kombu import Connection, Exchange, Producer, Queue

from common.redis_transport import CONSUMERS_KEY, Channel, Transport
from deploy.stack import ROOT

TRANSPORT = "common.redis_transport:Transport"
OPTIONS = {"queue_order_strategy": "priority", "visibility_timeout": 60}
SYNC, ASYNC = Queue("rt", Exchange("rt"), "rt"), Queue("rt.async", Exchange("rt.async"), "rt.async")
#: Well under the visibility timeout: what comes back sooner came back through the heartbeat.
BACK_WITHIN = 30.0

#: A consumer in a process of its own: takes one message, says which, then waits to be killed.
HOLDER = """
import sys, time
from kombu import Connection, Queue, Exchange
with Connection(sys.argv[1], transport="common.redis_transport:Transport") as connection:
    channel = connection.channel()
    message = Queue("rt", Exchange("rt"), "rt")(channel).get(no_ack=False)
    print(message.payload["n"], channel.consumer_id, flush=True)
    time.sleep(300)
"""


def publish(redis_url: str, queue: Queue, *numbers: int) -> None:
    """Messages as a stock kombu producer sends them (kombu's own transport, not this one)."""
    with Connection(redis_url) as connection:
        producer = Producer(connection.channel())
        for n in numbers:
            producer.publish({"n": n}, exchange=queue.exchange, routing_key=queue.routing_key,
                             declare=[queue], serializer="json")


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)  # polling Redis: there is nothing to block on


def _n(item: bytes | str) -> int:
    """The number a published message carries."""
    message = json.loads(item)
    body = message["body"]
    encoded = message["properties"].get("body_encoding") == "base64"
    return int(json.loads(base64.b64decode(body) if encoded else body)["n"])


def landed(client: redis.Redis, consumer: str) -> list[int]:
    """What ``consumer`` took from ``rt`` and has not acknowledged, the newest first."""
    return [_n(item) for item in client.lrange(f"_kombu.landing\x06\x16{consumer}\x06\x16rt", 0, -1)]


@pytest.fixture
def connection(redis_url: str, clean_redis: redis.Redis) -> Iterator[Connection]:
    with Connection(redis_url, transport=TRANSPORT, transport_options=OPTIONS) as connection:
        yield connection


def test_a_take_is_recorded_in_the_same_step_and_the_ack_clears_it(
        connection: Connection, clean_redis: redis.Redis, redis_url: str) -> None:
    assert isinstance(connection.transport, Transport)
    channel = connection.channel()
    assert isinstance(channel, Channel)
    publish(redis_url, ASYNC, 1)
    publish(redis_url, SYNC, 2, 3)
    first = SYNC(channel).get(no_ack=False)
    assert first is not None and first.payload == {"n": 2}
    # Landed (crash-safe) and unacknowledged (the visibility backstop); the queue length excludes it.
    assert landed(clean_redis, channel.consumer_id) == [2]
    assert clean_redis.hlen("unacked") == 1 and clean_redis.llen("rt") == 1
    first.ack()
    assert landed(clean_redis, channel.consumer_id) == [] and clean_redis.hlen("unacked") == 0
    # Without an acknowledgement to come (Celery's control replies), nothing stays landed.
    third = SYNC(channel).get(no_ack=True)
    assert third is not None and third.payload == {"n": 3}
    assert landed(clean_redis, channel.consumer_id) == [] and channel.landed == {}
    # One client serves every command until a reconnect replaces the pool.
    with channel.conn_or_acquire() as one, channel.conn_or_acquire() as two:
        assert one is two
    channel._pool = None
    with channel.conn_or_acquire() as three:
        assert three is not one and three.connection_pool is channel.pool


def test_the_consumer_takes_the_synchronous_queue_first_and_blocks_when_idle(
        connection: Connection, redis_url: str) -> None:
    publish(redis_url, ASYNC, 1, 2)
    publish(redis_url, SYNC, 3)
    got: list[int] = []

    def take(body: dict[str, int], message: Any) -> None:
        got.append(body["n"])
        message.ack()
    with connection.Consumer([SYNC, ASYNC], callbacks=[take], accept=["json"]):
        while len(got) < 3:
            connection.drain_events(timeout=5)
        assert got == [3, 1, 2]
        # Idle: blocked on the synchronous queue, woken by a message sent now.
        with pytest.raises(TimeoutError):
            connection.drain_events(timeout=1.5)
        publish(redis_url, SYNC, 4)
        connection.drain_events(timeout=5)
    assert got == [3, 1, 2, 4]
    publish(redis_url, SYNC, 5)
    with connection.Consumer([SYNC], callbacks=[lambda body, message: got.append(body["n"])], no_ack=True,
                             accept=["json"]) as consumer:
        connection.drain_events(timeout=5)
        assert got[-1] == 5 and consumer.channel.landed == {}


def test_a_closed_channel_hands_back_what_it_held_at_the_head(
        connection: Connection, clean_redis: redis.Redis, redis_url: str) -> None:
    publish(redis_url, SYNC, 1, 2)
    channel = connection.channel()
    assert SYNC(channel).get(no_ack=False) is not None
    channel.close()
    assert clean_redis.zcard(CONSUMERS_KEY) == 0 and clean_redis.hlen("unacked") == 0
    assert [_n(item) for item in clean_redis.lrange("rt", 0, -1)] == [2, 1]  # 1 is next


def test_what_is_not_a_kombu_message_is_dropped_alone(
        connection: Connection, clean_redis: redis.Redis, redis_url: str,
        caplog: pytest.LogCaptureFixture) -> None:
    clean_redis.lpush("rt", b"not json")
    publish(redis_url, SYNC, 1)
    channel = connection.channel()
    assert SYNC(channel).get(no_ack=False) is None
    assert "not a kombu message" in caplog.text and landed(clean_redis, channel.consumer_id) == []
    message = SYNC(channel).get(no_ack=False)
    assert message is not None and message.payload == {"n": 1}


def test_a_message_whose_reply_was_lost_is_adopted_back_to_its_queue(
        connection: Connection, clean_redis: redis.Redis, redis_url: str) -> None:
    channel = connection.channel()
    assert SYNC(channel).get(no_ack=False) is None  # registered and beating, nothing taken
    publish(redis_url, SYNC, 1)
    # The server moved it, the reply never arrived (a connection lost right then).
    clean_redis.lmove("rt", f"_kombu.landing\x06\x16{channel.consumer_id}\x06\x16rt", "RIGHT", "LEFT")
    wait_until(lambda: clean_redis.llen("rt") == 1, BACK_WITHIN, "the orphan adopted")
    message = SYNC(channel).get(no_ack=False)
    assert message is not None and message.payload == {"n": 1}


def test_a_busy_consumer_keeps_its_message_and_a_killed_one_gives_it_back_at_the_head(
        connection: Connection, clean_redis: redis.Redis, redis_url: str) -> None:
    publish(redis_url, SYNC, 1, 2, 3)
    observer = connection.channel()
    assert ASYNC(observer).get() is None  # a live consumer: it reaps in its heartbeat
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, redis_url], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout is not None
        taken, consumer = holder.stdout.readline().split()
        assert taken == "1" and landed(clean_redis, consumer) == [1]
        # Alive and beating: still its own after more than consumer_dead_after of the observer's reaps.
        took_at = float(clean_redis.zscore(CONSUMERS_KEY, consumer) or 0)
        wait_until(lambda: observer._last_beat > took_at + 1.5 * observer.consumer_dead_after, 30,
                   "the observer's heartbeats")
        assert landed(clean_redis, consumer) == [1] and clean_redis.llen("rt") == 2
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        wait_until(lambda: clean_redis.llen("rt") == 3, BACK_WITHIN, "the dead consumer's message back")
    finally:
        holder.kill()
        holder.wait(10)
    assert clean_redis.zscore(CONSUMERS_KEY, consumer) is None and clean_redis.hlen("unacked") == 0
    messages = [SYNC(observer).get(no_ack=True) for _ in range(3)]
    assert [(m.payload["n"], m.delivery_info.get("redelivered", False)) for m in messages] == [
        (1, True), (2, False), (3, False)]  # flagged, so a result stored before the kill is not redone
