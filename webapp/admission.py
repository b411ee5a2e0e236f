"""Admission control: refuse work (503) before it is queued, instead of queueing it invisibly.

Bounds as Ray Serve's ``max_queued_requests`` and Triton's ``max_queue_size``,
one per queue, since workers read the synchronous queue first:

- the synchronous queue: when ``MAX_SYNC_QUEUE_LENGTH`` tasks already wait
  in it, ``/predict`` answers 503 with ``Retry-After`` before enqueuing; a
  short queue keeps the accepted requests' latency near the unloaded one;
- the async queue: ``MAX_QUEUE_LENGTH`` for ``?async=true``, a longer
  backlog whose memory Redis' ``maxmemory`` bounds too;
- this process' synchronous waiters: at most ``MAX_WAITING_REQUESTS``
  requests wait for a result at once, below gunicorn's thread count, so a
  burst is answered 503 at once instead of queueing behind busy threads.

A queue's length is Redis' ``LLEN``, read at most every ``cache_seconds``
per process (a flood costs one read per interval, not one per request).
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from kombu import Connection

from common.broker import redis_client

from .exceptions import Overloaded

__all__ = ["AmqpQueueLengths", "BoundedQueue", "QueueClient", "QueueLength", "WaitingRequests",
           "broker_queue_client"]

logger = logging.getLogger(__name__)

_AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


class QueueClient(Protocol):
    """What reads a queue's length: a Redis client, or :class:`AmqpQueueLengths`."""

    def llen(self, name: str) -> Any: ...


class AmqpQueueLengths:
    """Ready messages in a RabbitMQ queue (a passive declare), over one connection of its own.

    ``llen`` raises on any broker error after dropping the connection; the
    next call connects again. Not for two threads at once (an AMQP connection
    is not): a :class:`QueueLength` reads from one thread at a time, so each
    gets a client of its own.
    """

    def __init__(self, broker_url: str, timeout: float) -> None:
        self._connection = Connection(broker_url, connect_timeout=timeout, heartbeat=0,
                                      transport_options={"read_timeout": timeout, "write_timeout": timeout})

    def llen(self, name: str) -> int:
        try:
            return int(self._connection.default_channel.queue_declare(queue=name, passive=True).message_count)
        except Exception:
            self._connection.close()  # a missing queue closes the channel; a dead link, everything
            raise


def broker_queue_client(broker_url: str, timeout: float) -> QueueClient | None:
    """A reader of the broker's queue lengths with short timeouts; None for a broker it cannot read."""
    client = redis_client(broker_url, timeout)
    if client is not None:
        return client
    if broker_url.startswith(_AMQP_SCHEMES):
        return AmqpQueueLengths(broker_url, timeout)
    return None


class QueueLength:
    """The broker queue's length (Redis ``LLEN``, RabbitMQ's ready messages), read at most once
    per ``cache_seconds``.

    One thread reads while the others reuse the last value: no request ever
    waits on another's read. None while unknown (a broker it cannot read, or
    the read failed: sending then fails fast on its own).
    """

    def __init__(self, client: QueueClient | None, queue: str, cache_seconds: float = 0.1) -> None:
        if cache_seconds < 0:
            raise ValueError(f"cache_seconds must be >= 0, got {cache_seconds!r}")
        self.client = client
        self.queue = queue
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._value: int | None = None
        self._read_at = -float("inf")

    def get(self) -> int | None:
        """The cached length, refreshed when older than ``cache_seconds``."""
        if self.client is None:
            return None
        if time.monotonic() - self._read_at < self.cache_seconds:
            return self._value
        if not self._lock.acquire(blocking=False):
            return self._value  # another thread is reading
        try:
            try:
                self._value = int(self.client.llen(self.queue))
            except Exception as exc:  # noqa: BLE001 - unknown, never a failed request
                logger.debug("Reading the length of queue %s failed: %s", self.queue, exc)
                self._value = None
            self._read_at = time.monotonic()
            return self._value
        finally:
            self._lock.release()


class BoundedQueue:
    """A broker queue that admits a task while fewer than ``limit`` wait in it (0: unbounded)."""

    def __init__(self, length: QueueLength, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")
        self.length = length
        self.limit = limit

    @property
    def name(self) -> str:
        return self.length.queue

    def admit(self, retry_after: int) -> None:
        """Overloaded (503) when the queue is full; admitted when its length is unknown."""
        if not self.limit:
            return
        waiting = self.length.get()
        if waiting is not None and waiting >= self.limit:
            raise Overloaded(f"{waiting} tasks are already queued (the limit is {self.limit}); "
                             "try again shortly", retry_after, reason="queue_full")


class WaitingRequests:
    """Slots for synchronous requests waiting on a result; full means 503 at once."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        self.limit = limit
        self._lock = threading.Lock()
        self._started: dict[int, float] = {}
        self._tokens = itertools.count()

    @contextmanager
    def slot(self, retry_after: int) -> Iterator[None]:
        """Hold a slot for the block; Overloaded (503) when all are taken."""
        token = next(self._tokens)
        with self._lock:
            if len(self._started) >= self.limit:
                raise Overloaded(
                    f"this server already has {self.limit} requests waiting; try again shortly",
                    retry_after, reason="waiting_full")
            self._started[token] = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                del self._started[token]

    def count(self) -> int:
        """Requests waiting now."""
        return len(self._started)

    def oldest_age(self) -> float:
        """Seconds the oldest waiting request has waited (0 when none)."""
        with self._lock:
            oldest = min(self._started.values(), default=None)
        return 0.0 if oldest is None else time.monotonic() - oldest

