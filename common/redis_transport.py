"""kombu's Redis transport with reliable fetch, consumer liveness, and one client per channel.

kombu pops (BRPOP) and records the message as unacknowledged in a second round trip: a consumer
killed in between loses it. Here the take is the record: ``LMOVE`` (a script over the queues in
priority order) or, all empty, a blocking ``BLMOVE`` on the first, into a *landing* list of the
consumer's own that its acknowledgement clears. Consumers heartbeat from a thread; the survivors put
a silent one's landing lists back at the head of their queues. kombu's visibility timeout stays the
backstop; queues stay kombu's JSON lists. One ``redis.Redis`` per channel, not one per command.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from time import monotonic
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

__all__ = ["CONSUMERS_KEY", "Channel", "Transport"]

logger = logging.getLogger(__name__)

#: Sorted set: consuming channel -> the Redis time of its last heartbeat.
CONSUMERS_KEY = "_kombu.consumers"

# KEYS: source, landing, source, landing... in priority order. The first message found, moved.
_TAKE = """
for i = 1, #KEYS, 2 do
  local item = redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'RIGHT', 'LEFT')
  if item then return {KEYS[i], item} end
end
return false
"""
# KEYS: landing, source, unacked, unacked index; ARGV: the message as landed, its tag, as restored.
# Only a message still landed goes back (to the right: the head), never one acknowledged meanwhile.
_RESTORE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
return 1
"""
# KEYS: consumers; ARGV: this consumer, dead after (s), its previous beat. Beats (Redis' clock); the
# consumers silent longer, each leased to this reaper; none if its own last beat is old (a stall).
_BEAT = """
local t = redis.call('TIME')
local now, dead_after = tonumber(t[1]) + tonumber(t[2]) / 1e6, tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
if now - tonumber(ARGV[3]) > 0.4 * dead_after then return {tostring(now), {}} end
local silent = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - dead_after)
for _, other in ipairs(silent) do redis.call('ZADD', KEYS[1], now, other) end
return {tostring(now), silent}
"""


class QoS(kombu_redis.QoS):
    """kombu's acknowledgement emulation, which also clears the message from its landing list."""

    channel: Channel

    def _remove_from_indices(self, delivery_tag: str, pipe: Any = None) -> Any:
        pipe = super()._remove_from_indices(delivery_tag, pipe)
        landed = self.channel.landed.get(delivery_tag)
        if landed is not None:
            pipe.lrem(self.channel.landing_key(self.channel.consumer_id, landed[0]), 1, landed[1])
        return pipe

    def ack(self, delivery_tag: str) -> None:
        super().ack(delivery_tag)
        self.channel.landed.pop(delivery_tag, None)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        super().reject(delivery_tag, requeue)
        self.channel.landed.pop(delivery_tag, None)


class Channel(kombu_redis.Channel):
    QoS = QoS
    from_transport_options: Any = (*kombu_redis.Channel.from_transport_options, "consumer_dead_after")
    #: Seconds without a heartbeat (sent every fifth of it) before a consumer counts as dead.
    consumer_dead_after = 5.0
    _shared_client: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            raise ValueError("common.redis_transport does not support global_keyprefix: give the broker "
                             "a Redis DB of its own instead")
        self.consumer_id = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        #: Delivery tag -> (source queue key, the message as it lies in the landing list).
        self.landed: dict[str, tuple[str, bytes]] = {}
        self._block_next = False  # the last take found every queue empty: block on the first
        self._pending: tuple[str, str] = ("", "")
        self._takes = [0, 0]  # sent, answered: the heartbeat thread adopts orphans only when equal
        self._heart: threading.Event | None = None  # set: stop beating
        self._last_beat = 0.0
        self._consumed: set[str] = set()
        self._no_ack: set[str] = set()  # queues consumed without acknowledgements (Celery's replies)

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared_client
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
        yield shared

    def landing_key(self, consumer: str, source: str) -> str:
        return f"_kombu.landing{self.sep}{consumer}{self.sep}{source}"

    def _sources_key(self, consumer: str) -> str:
        return f"_kombu.sources{self.sep}{consumer}"

    def _take_args(self, queues: list[str]) -> list[str]:
        keys = [self._q_for_pri(queue, pri) for pri in self.priority_steps for queue in queues]
        return [key for source in keys for key in (source, self.landing_key(self.consumer_id, source))]

    def _register_consumer(self, queue: str) -> None:
        """Before the first take from ``queue``: known as a consumer, its keys findable by reapers."""
        if queue in self._consumed:
            return
        self._consumed.add(queue)
        sources = [self._q_for_pri(queue, pri) for pri in self.priority_steps]
        with self.conn_or_acquire() as client:
            client.sadd(self._sources_key(self.consumer_id), *sources)
            self._beat(client)  # before any take: known to reapers
        if self._heart is None:  # off the consumer's thread: a busy or paused consumer keeps beating
            self._heart = threading.Event()
            beat = (weakref.ref(self), self._heart, self.consumer_dead_after / 5)
            name = f"heartbeat {self.consumer_id}"
            threading.Thread(target=_beating, args=beat, name=name, daemon=True).start()

    def basic_consume(self, queue: str, no_ack: bool, *args: Any, **kwargs: Any) -> Any:
        if no_ack:
            self._no_ack.add(queue)
        elif queue not in self._fanout_queues:
            self._register_consumer(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        message = super().basic_get(queue, no_ack, **kwargs)
        if message is not None and no_ack:
            self._unland(message.delivery_tag)
        return message

    def _unland(self, tag: str) -> None:
        """A message taken without an acknowledgement to come: out of its landing list now."""
        source, item = self.landed.pop(tag)
        with self.conn_or_acquire() as client:
            client.lrem(self.landing_key(self.consumer_id, source), 1, item)

    def _brpop_start(self, timeout: float | None = None) -> None:
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        args = self._take_args(queues)
        if self._block_next:
            wait = self.brpop_timeout if timeout is None else timeout
            command: list[Any] = ["BLMOVE", args[0], args[1], "RIGHT", "LEFT", wait or 0]
        else:
            command = ["EVAL", _TAKE, len(args), *args]
        self._pending = (command[0], args[0])
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]
        self._takes[0] += 1
        self.client.connection.send_command(*command)

    def _brpop_read(self, **options: Any) -> bool:
        command, first = self._pending
        try:
            try:
                reply = self.client.parse_response(self.client.connection, command, **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # the next take reconnects; an orphan is adopted
                raise
            self._block_next = command == "EVAL" and not reply
            if not reply or self._closing:  # while closing, what landed is restored by close()
                raise kombu_redis.Empty()
            source, item = (first, reply) if command == "BLMOVE" else (bytes_to_str(reply[0]), reply[1])
            queue = source.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            payload = self._landed(source, item)
            if queue in self._no_ack:
                self._unland(str(payload["properties"]["delivery_tag"]))
            self.connection._deliver(payload, queue)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._takes[1] += 1
            self._flush_brpop_reauth()

    def _get(self, queue: str, timeout: Any = None) -> Any:
        """``basic_get``: the same atomic take, without blocking."""
        self._register_consumer(queue)
        args = self._take_args([queue])
        self._takes[0] += 1
        try:
            with self.conn_or_acquire() as client:
                reply = client.eval(_TAKE, len(args), *args)
            if not reply:
                raise kombu_redis.Empty()
            return self._landed(bytes_to_str(reply[0]), reply[1])
        finally:
            self._takes[1] += 1

    def _landed(self, source: str, item: bytes) -> Any:
        """A message just landed, remembered for its acknowledgement; one that is not a kombu message
        reaches no consumer: logged and dropped, never retried forever."""
        payload, tag = _decode(item)
        if tag is None:
            logger.error("dropped a message from %s that is not a kombu message: %r", source, item[:200])
            with self.conn_or_acquire() as client:
                client.lrem(self.landing_key(self.consumer_id, source), 1, item)
            raise kombu_redis.Empty()
        self.landed[tag] = (source, item)
        return payload

    def _beat(self, client: Any) -> None:
        """Heartbeat; restore what silent consumers held, then this one's orphans."""
        now, silent = client.eval(_BEAT, 1, CONSUMERS_KEY, self.consumer_id, self.consumer_dead_after,
                                  self._last_beat)
        self._last_beat = float(now)
        for other in map(bytes_to_str, silent):
            if restored := self._restore_all(client, other):
                logger.warning("consumer %s stopped beating: %d message(s) it held are back at the head of "
                               "their queues", other, restored)
            self._forget(client, other)
        self._adopt_orphans(client)

    def _forget(self, client: Any, consumer: str) -> None:
        client.delete(self._sources_key(consumer))
        client.zrem(CONSUMERS_KEY, consumer)

    def _landings(self, client: Any, consumer: str) -> dict[str, list[bytes]]:  # the newest first
        sources = map(bytes_to_str, client.smembers(self._sources_key(consumer)))
        return {source: client.lrange(self.landing_key(consumer, source), 0, -1) for source in sources}

    def _restore_all(self, client: Any, consumer: str, landings: dict[str, list[bytes]] | None = None,
                     keep: frozenset[bytes] = frozenset()) -> int:
        """What ``consumer`` landed (but ``keep``) back at the head of its queues, the oldest first in
        line (the newest is pushed first), marked redelivered as kombu marks what it restores."""
        restored = 0
        for source, items in (self._landings(client, consumer) if landings is None else landings).items():
            for item in (i for i in items if i not in keep):
                payload, tag = _decode(item)
                with suppress(KeyError, TypeError):  # as kombu marks it (the batching consumer reads it)
                    payload["headers"]["redelivered"] = True
                    payload["properties"]["delivery_info"]["redelivered"] = True
                restored += client.eval(_RESTORE, 4, self.landing_key(consumer, source), source,
                                        self.unacked_key, self.unacked_index_key, item, tag or "",
                                        item if tag is None else dumps(payload))
        return restored

    def _adopt_orphans(self, client: Any) -> None:
        """Landed messages never received (the reply lost with the connection) back in line; only from a
        snapshot taken while no take was in flight (one whose reply is on its way looks the same)."""
        sent = self._takes[0]
        if sent != self._takes[1]:
            return
        keep = frozenset(item for _, item in list(self.landed.values()))
        with client.pipeline(transaction=False) as pipe:  # lengths first: the messages only if one is extra
            for source in map(bytes_to_str, client.smembers(self._sources_key(self.consumer_id))):
                pipe.llen(self.landing_key(self.consumer_id, source))
            if sum(pipe.execute()) <= len(keep):
                return
        landings = self._landings(client, self.consumer_id)
        if self._takes[0] == sent and sum(map(len, landings.values())) > len(keep):
            if restored := self._restore_all(client, self.consumer_id, landings, keep):
                logger.warning("%d message(s) whose delivery the connection lost are back in line", restored)

    def close(self) -> None:
        self._closing = True
        if self._in_poll:
            with suppress(kombu_redis.Empty, *self.connection_errors):
                self._brpop_read()  # the pending take's reply, so nothing is in flight
        if self._heart is not None:
            self._heart.set()
            try:  # what it holds goes back now, not after consumer_dead_after
                with self.conn_or_acquire() as client:
                    self._restore_all(client, self.consumer_id)
                    self._forget(client, self.consumer_id)
                self.landed.clear()
            except self.connection_errors as exc:
                logger.warning("could not hand back what %s held (%r): the survivors will",
                               self.consumer_id, exc)
        super().close()


def _beating(channel_ref: weakref.ref[Channel], stopped: threading.Event, interval: float) -> None:
    """Until the channel is closed or gone (a reconnect dropped it): then the survivors restore its own."""
    while not stopped.wait(interval) and (channel := channel_ref()) is not None and not channel.closed:
        try:
            with channel.conn_or_acquire() as client:
                channel._beat(client)
        except Exception as exc:  # Redis away: the next beat retries
            logger.warning("heartbeat of %s failed: %r", channel.consumer_id, exc)
        del channel


def _decode(item: bytes) -> tuple[Any, str | None]:
    """A landed message's payload and delivery tag; (None, None) when it is not a kombu message."""
    try:
        payload = loads(bytes_to_str(item))
        return payload, str(payload["properties"]["delivery_tag"])
    except (ValueError, TypeError, KeyError):
        return None, None


class Transport(kombu_redis.Transport):
    Channel = Channel
