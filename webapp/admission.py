"""What admission control reads: each broker queue's length against its bound, the waiting requests,
and each model's predicted latency."""
from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kombu import Connection

from common import broker

__all__ = ["AmqpQueueLengths", "BoundedQueue", "LatencyPredictor", "QueueLength", "WaitingRequests",
           "bounded_queues", "broker_queue_client"]

logger = logging.getLogger(__name__)

#: How stale a queue's length may be, seconds (the synchronous queue's bound is small).
SYNC_READ_SECONDS, ASYNC_READ_SECONDS = 0.01, 0.1


class AmqpQueueLengths:
    """Ready messages in a RabbitMQ queue (a passive declare), for one thread; reconnects after an error."""

    def __init__(self, broker_url: str, timeout: float) -> None:
        self._connection = Connection(broker_url, connect_timeout=timeout, heartbeat=0,
                                      transport_options={"read_timeout": timeout, "write_timeout": timeout})

    def llen(self, name: str) -> int:
        try:
            return int(self._connection.default_channel.queue_declare(queue=name, passive=True).message_count)
        except Exception:
            self._connection.close()  # a missing queue closes the channel; a dead link, everything
            raise


def broker_queue_client(broker_url: str, timeout: float) -> Any:
    """A reader of the broker's queue lengths (``llen``); None when neither Redis nor RabbitMQ."""
    client = broker.redis_client(broker_url, timeout)
    if client is not None:
        return client
    return AmqpQueueLengths(broker_url, timeout) if broker.is_amqp(broker_url) else None


class QueueLength:
    """A queue's length, read at most every ``cache_seconds`` by one thread at a time; None while unknown."""

    def __init__(self, client: Any, queue: str, cache_seconds: float = ASYNC_READ_SECONDS) -> None:
        self.client, self.queue, self.cache_seconds = client, queue, cache_seconds
        self._lock = threading.Lock()
        self._value: int | None = None
        self._read_at = -float("inf")

    def get(self) -> int | None:
        if self.client is None:
            return None
        if time.monotonic() - self._read_at < self.cache_seconds or not self._lock.acquire(blocking=False):
            return self._value  # fresh, or another thread is reading
        try:
            self._value = int(self.client.llen(self.queue))
        except Exception as exc:  # noqa: BLE001 - unknown, never a failed request
            logger.debug("Reading the length of queue %s failed: %s", self.queue, exc)
            self._value = None
        finally:
            self._read_at = time.monotonic()
            self._lock.release()
        return self._value


@dataclass
class BoundedQueue:
    """A broker queue that admits a task while fewer than ``limit`` wait in it (0: unbounded)."""

    length: QueueLength
    limit: int

    @property
    def name(self) -> str:
        return self.length.queue

    def full(self) -> int | None:
        """The tasks waiting when they reach the limit; None when a task is admitted (or unknown)."""
        waiting = self.length.get() if self.limit else None
        return waiting if waiting is not None and waiting >= self.limit else None


def bounded_queues(broker_url: str, timeout: float, sync_limit: int, async_limit: int, sync_queue: str,
                   async_queue: str) -> dict[str, BoundedQueue]:
    """A model's two bounded queues, ``"sync"`` and ``"async"``, each read by a client of its own."""
    return {kind: BoundedQueue(QueueLength(broker_queue_client(broker_url, timeout), queue, seconds), limit)
            for kind, queue, seconds, limit in (("sync", sync_queue, SYNC_READ_SECONDS, sync_limit),
                                                ("async", async_queue, ASYNC_READ_SECONDS, async_limit))}


class WaitingRequests:
    """Slots for synchronous requests waiting on a result: fewer than the threads, so a burst is refused."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}
        self._tokens = itertools.count()

    @contextmanager
    def slot(self) -> Iterator[bool]:
        """Hold a slot for the block; yields False (and holds none) when all are taken."""
        token = next(self._tokens)
        with self._lock:
            admitted = len(self._started) < self.limit
            if admitted:
                self._started[token] = time.monotonic()
        try:
            yield admitted
        finally:
            with self._lock:
                self._started.pop(token, None)

    def count(self) -> int:
        return len(self._started)

    def oldest_age(self) -> float:
        """Seconds the oldest waiting request has waited (0 when none)."""
        with self._lock:
            oldest = min(self._started.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest


class LatencyPredictor:
    """A model's synchronous requests waiting in this process and their completion rate over the time
    any waited: one more would take (waiting + 1) / rate (Little's law; per process, both are its
    share). It refuses only while the broker queue holds tasks: below saturation more load is served
    as fast (a batch that waits to fill is slow, not behind). Counting every completion, not only
    those while the queue held tasks, keeps batch mode's prefetch (the queue often empty while the
    worker is full) from reading as a slow rate."""

    def __init__(self, window: int = 256, clock: Callable[[], float] = time.monotonic) -> None:
        self.waiting, self._clock, self._lock = 0, clock, threading.Lock()
        self._saturated, self._before, self._since = False, 0.0, 0.0  # busy s before; this spell's start
        self._done: deque[float] = deque(maxlen=window)  # the busy clock at each completion

    def _busy(self) -> float:
        return self._before + (self._clock() - self._since if self.waiting else 0.0)

    def backlog(self, queued: int | None) -> None:
        """The broker queue's length (None: unknown) as last read."""
        self._saturated = bool(queued)

    @contextmanager
    def waiting_one(self) -> Iterator[None]:
        with self._lock:
            if not self.waiting:
                self._since = self._clock()
            self.waiting += 1
        try:
            yield
        finally:
            with self._lock:
                self._done.append(self._busy())
                if self.waiting == 1:
                    self._before = self._busy()
                self.waiting -= 1

    def refusal(self, objective: float) -> tuple[float, int] | None:
        """(predicted s, ``Retry-After``: until the waiting drain below ``objective``) if one more would
        miss it; None while the workers keep up. A stall counts: the rate falls while nothing completes."""
        with self._lock:
            span = self._busy() - self._done[0] if len(self._done) >= 8 and objective > 0 else 0.0
            rate = (len(self._done) - 1) / span if span > 0 and self._saturated else 0.0
            if not rate or (predicted := (self.waiting + 1) / rate) <= objective:
                return None
            return predicted, max(1, math.ceil(self.waiting / rate - objective))
