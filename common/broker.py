"""What the web app and the workers need to know of a broker URL besides Celery's settings."""
from __future__ import annotations

import redis

__all__ = ["REDIS_SCHEMES", "redis_client"]

#: Broker URLs served by a Redis (the rest, ``amqp://`` and kin, by RabbitMQ).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def redis_client(broker_url: str, timeout: float) -> redis.Redis | None:
    """A client of the broker's Redis whose commands fail after ``timeout`` seconds instead of
    hanging; None for a broker that is not Redis."""
    if not broker_url.startswith(REDIS_SCHEMES):
        return None
    return redis.Redis.from_url(broker_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                socket_keepalive=True, health_check_interval=30)
