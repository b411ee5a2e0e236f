"""The Redis transport celeryconfig names for ``redis://`` brokers: one client per channel, real Redis."""
from __future__ import annotations

import redis

from kombu import Connection, Exchange, Producer, Queue

from common.redis_transport import Channel, Transport


def test_one_client_serves_every_command_until_the_pool_changes(redis_url: str,
                                                              clean_redis: redis.Redis) -> None:
    with Connection(redis_url, transport="common.redis_transport:Transport") as connection:
        assert isinstance(connection.transport, Transport)
        channel = connection.channel()
        assert isinstance(channel, Channel)
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        given = redis.Redis.from_url(redis_url)
        with channel.conn_or_acquire(given) as client:
            assert client is given
        channel._pool = None  # what a reconnect does: a new pool, so a new client over it
        with channel.conn_or_acquire() as third:
            assert third is not first and third.connection_pool is channel.pool
        # Publishing, consuming and acknowledging work through it.
        queue = Queue("transport-test", Exchange("transport-test"), "transport-test")
        Producer(channel).publish({"n": 1}, exchange=queue.exchange, routing_key="transport-test",
                                  declare=[queue], serializer="json")
        message = queue(channel).get(no_ack=False)
        assert message is not None and message.payload == {"n": 1}
        message.ack()
        assert clean_redis.hlen("unacked") == 0
