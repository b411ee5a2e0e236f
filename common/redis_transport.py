"""kombu's Redis transport, with one client per channel for its one-off commands.

kombu builds a new ``redis.Redis`` for every command it sends outside the consumer's
poll loop (``Channel.conn_or_acquire``): each publish of a task or an event, each
acknowledgement, each record of an unacknowledged message. The client is a thin
object over the channel's connection pool, but building one runs redis-py's whole
set-up (response callbacks, retry, event dispatcher): 5-9% of a worker's and of the
web process' Python time under load (``docs/benchmarks.md``, "Stack overhead").
A ``redis.Redis`` over a pool is thread-safe, so one per channel serves them all,
built again whenever the channel's pool is replaced (a reconnect).

``celeryconfig.broker_transport`` names it for ``redis://`` brokers.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

__all__ = ["Channel", "Transport"]


class Channel(kombu_redis.Channel):
    """Reuses one client over the channel's pool instead of building one per command."""

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
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel
