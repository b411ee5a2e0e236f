"""kombu's Redis transport with one client per channel for its one-off commands.

kombu builds a new ``redis.Redis`` for every command outside the consumer's poll loop
(``Channel.conn_or_acquire``: each publish, acknowledgement, record of an unacknowledged
message), and building one runs redis-py's whole set-up: a measurable share of a worker's and of
the web process' time under load (docs/benchmarks.md, "Stack overhead"). A client over a pool is
thread-safe, so one per channel serves them all, built again when a reconnect replaces the pool.
``celeryconfig.broker_transport`` names it for ``redis://`` brokers.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

__all__ = ["Channel", "Transport"]


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
        yield shared


class Transport(kombu_redis.Transport):
    Channel = Channel
