"""The one answer to "is this broker a Redis?"; standard library only, for the deploy scripts' use."""
from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import redis

__all__ = ["AMQP_SCHEMES", "REDIS_SCHEMES", "is_amqp", "is_redis", "redis_client"]

#: A Redis (a ``unix://`` socket included), and RabbitMQ.
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})


def is_redis(url: object) -> bool:
    return isinstance(url, str) and urlsplit(url).scheme.lower() in REDIS_SCHEMES


def is_amqp(url: object) -> bool:
    return isinstance(url, str) and urlsplit(url).scheme.lower() in AMQP_SCHEMES


def redis_client(broker_url: str, timeout: float) -> redis.Redis | None:
    """A client of the broker's Redis whose commands time out instead of hanging; None if not Redis."""
    if not is_redis(broker_url):
        return None
    import redis

    return redis.Redis.from_url(broker_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                socket_keepalive=True, health_check_interval=30)
