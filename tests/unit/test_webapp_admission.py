"""What admission reads: the cached queue length, the bounds and the waiting slots."""
from __future__ import annotations

import threading

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from webapp.admission import (
    AmqpQueueLengths,
    BoundedQueue,
    LatencyPredictor,
    QueueLength,
    WaitingRequests,
    broker_queue_client,
)


class FakeRedis:
    """Counts LLEN calls; optionally blocks inside one, or fails."""

    def __init__(self, length: int = 3) -> None:
        self.length, self.calls = length, 0
        self.error: Exception | None = None
        self.entered, self.release = threading.Event(), threading.Event()
        self.release.set()

    def llen(self, queue: str) -> int:
        self.calls += 1
        self.entered.set()
        self.release.wait(10)
        if self.error is not None:
            raise self.error
        return self.length


def test_length_is_cached_for_cache_seconds_then_reread() -> None:
    client = FakeRedis(7)
    cached, fresh = QueueLength(client, "inference", cache_seconds=60), QueueLength(client, "q", 0)
    assert [cached.get() for _ in range(5)] == [7] * 5 and client.calls == 1
    fresh.get()
    client.length = 9
    assert fresh.get() == 9 and client.calls == 3


def test_no_thread_waits_on_another_threads_read() -> None:
    client = FakeRedis(7)
    length = QueueLength(client, "inference", cache_seconds=0)
    length.get()
    client.release.clear()
    client.entered.clear()
    reader = threading.Thread(target=length.get)
    reader.start()
    assert client.entered.wait(10)
    assert length.get() == 7  # the last value, at once, while the read is blocked
    client.release.set()
    reader.join(10)
    assert client.calls == 2


@pytest.mark.parametrize(("limit", "length", "full"), [(3, 2, None), (3, 3, 3), (3, 5, 5), (0, 99, None)])
def test_a_bounded_queue_is_full_at_its_limit(limit: int, length: int, full: int | None) -> None:
    assert BoundedQueue(QueueLength(FakeRedis(length), "q"), limit).full() == full


def test_a_failed_read_or_a_broker_it_cannot_read_is_unknown_and_redis_is_read_with_short_timeouts() -> None:
    client = FakeRedis()
    client.error = RedisConnectionError("down")
    assert QueueLength(client, "q").get() is None
    assert isinstance(broker_queue_client("amqp://guest@localhost//", 1.0), AmqpQueueLengths)
    assert broker_queue_client("sqs://", 1.0) is None
    assert QueueLength(None, "q").get() is None
    client = broker_queue_client("redis://127.0.0.1:6399/3", 0.5)
    assert isinstance(client, redis.Redis)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.5 and kwargs["socket_connect_timeout"] == 0.5
    assert kwargs["socket_keepalive"] is True and kwargs["db"] == 3


def test_slots_refuse_when_full_and_free_on_exit_even_on_failure() -> None:
    waiting = WaitingRequests(2)
    with waiting.slot() as first, waiting.slot() as second:
        assert first and second and waiting.count() == 2 and waiting.oldest_age() >= 0
        with waiting.slot() as third:
            assert not third and waiting.count() == 2
    assert waiting.count() == 0 and waiting.oldest_age() == 0.0
    with pytest.raises(RuntimeError), waiting.slot():
        raise RuntimeError("worker failed")
    assert waiting.count() == 0


def test_the_predicted_latency_is_the_waiting_over_the_completion_rate_refused_only_while_queued() -> None:
    now = [0.0]
    predictor = LatencyPredictor(window=16, clock=lambda: now[0])

    def serve(count: int, each: float) -> None:  # one at a time, ``each`` seconds apiece
        for _ in range(count):
            with predictor.waiting_one():
                now[0] += each
    serve(10, 2.0)  # slow (a batch waiting to fill), but the broker queue empty: never a refusal
    predictor.backlog(0)
    with predictor.waiting_one(), predictor.waiting_one(), predictor.waiting_one():
        assert predictor.refusal(0.001) is None
    serve(16, 0.1)  # 10 per second, and the window forgets the slow ones
    now[0] += 60  # nobody waiting: not counted
    predictor.backlog(2)
    with predictor.waiting_one(), predictor.waiting_one(), predictor.waiting_one():
        assert predictor.refusal(0.5) is None and predictor.refusal(0) is None  # 0: off
        assert predictor.refusal(0.35) == (pytest.approx(0.4), 1)  # 3 waiting at 10/s; Retry-After >= 1 s
        now[0] += 10  # a stall: nothing completes, so the rate falls and the prediction grows
        assert predictor.refusal(0.5) == (pytest.approx(4 * 11.5 / 15), 2)  # 15 completions in 11.5 s
        predictor.backlog(None)
        assert predictor.refusal(0.5) is None  # the queue's length unknown: no refusal
    assert predictor.waiting == 0
