"""Admission control: the cached queue length and the waiting slots."""
from __future__ import annotations

import threading

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from webapp.admission import AmqpQueueLengths, QueueLength, WaitingRequests, broker_queue_client
from webapp.exceptions import Overloaded


class FakeRedis:
    """Counts LLEN calls; optionally blocks inside one, or fails."""

    def __init__(self, length: int = 3) -> None:
        self.length = length
        self.calls = 0
        self.error: Exception | None = None
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def llen(self, queue: str) -> int:
        self.calls += 1
        self.entered.set()
        self.release.wait(10)
        if self.error is not None:
            raise self.error
        return self.length


def test_length_is_cached_for_cache_seconds() -> None:
    redis = FakeRedis(7)
    length = QueueLength(redis, "inference", cache_seconds=60)
    assert [length.get() for _ in range(5)] == [7] * 5
    assert redis.calls == 1


def test_length_is_reread_once_stale() -> None:
    redis = FakeRedis(7)
    length = QueueLength(redis, "inference", cache_seconds=0)
    length.get()
    redis.length = 9
    assert length.get() == 9 and redis.calls == 2


def test_no_thread_waits_on_another_threads_read() -> None:
    redis = FakeRedis(7)
    length = QueueLength(redis, "inference", cache_seconds=0)
    length.get()
    redis.release.clear()
    redis.entered.clear()
    reader = threading.Thread(target=length.get)
    reader.start()
    assert redis.entered.wait(10)
    assert length.get() == 7  # the last value, at once, while the read is blocked
    redis.release.set()
    reader.join(10)
    assert redis.calls == 2


def test_failed_read_is_unknown() -> None:
    redis = FakeRedis()
    redis.error = RedisConnectionError("down")
    assert QueueLength(redis, "q").get() is None


def test_a_broker_it_cannot_read_means_unknown() -> None:
    assert isinstance(broker_queue_client("amqp://guest@localhost//", 1.0), AmqpQueueLengths)
    assert broker_queue_client("sqs://", 1.0) is None
    assert QueueLength(None, "q").get() is None


def test_broker_client_has_short_timeouts() -> None:
    client = broker_queue_client("redis://127.0.0.1:6399/3", 0.5)
    assert isinstance(client, redis.Redis)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.5 and kwargs["socket_connect_timeout"] == 0.5
    assert kwargs["socket_keepalive"] is True and kwargs["db"] == 3


def test_slots_refuse_when_full_and_free_on_exit() -> None:
    waiting = WaitingRequests(2)
    with waiting.slot(5), waiting.slot(5):
        assert waiting.count() == 2 and waiting.oldest_age() >= 0
        with pytest.raises(Overloaded) as refused, waiting.slot(5):
            pass
        assert refused.value.reason == "waiting_full"
        assert refused.value.headers() == {"Retry-After": "5"}
    assert waiting.count() == 0 and waiting.oldest_age() == 0.0


def test_slot_is_freed_when_the_request_fails() -> None:
    waiting = WaitingRequests(1)
    with pytest.raises(RuntimeError), waiting.slot(5):
        raise RuntimeError("worker failed")
    with waiting.slot(5):
        assert waiting.count() == 1


@pytest.mark.parametrize("bad", [0, -1])
def test_limit_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        WaitingRequests(bad)
