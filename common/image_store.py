"""Uploads kept beside the queue, on a Redis broker (the claim-check pattern).

Inside a task message an image costs four copies and two encodings: kombu's Redis
transport base64-encodes the body into a JSON envelope, the queue holds it, and the
worker decodes it and writes the whole envelope again into its unacknowledged-message
hash (and JSON-encodes it once more to do so). Stored under a key of its own, next to
the queue, the bytes cross to Redis once and back once, raw; the task carries ``None``
in their place (``common.contract.ClassifyArgs``) and the worker reads
:func:`image_key` of its own task id, so a message can never name another key.

The key lives as long as the task may still run (its deadline) plus
:data:`GRACE_SECONDS`, in the broker's own Redis: it is kept exactly as the message
is (same persistence, same ``maxmemory``), and a worker deletes it once the task's
result is stored. A message redelivered after its worker died finds it still there.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from common.broker import redis_client

__all__ = ["GRACE_SECONDS", "KEY_PREFIX", "ImageStore", "image_key"]
#: Keys of stored uploads: the prefix, then the task id.
KEY_PREFIX = "inference:image:"
#: Seconds an image outlives its task's deadline: room for a worker that took the task
#: just before it (decoding, clock skew between hosts).
GRACE_SECONDS = 60.0


def image_key(task_id: str) -> str:
    """Where the image of task ``task_id`` is stored."""
    return KEY_PREFIX + task_id


class ImageStore:
    """Images by task id in a Redis (any client with ``set``/``get``/``delete``)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    def for_broker(cls, broker_url: str, timeout: float) -> ImageStore | None:
        """A store on the broker's Redis with ``timeout``-second sockets; None for another broker
        (RabbitMQ's messages carry their images)."""
        client = redis_client(broker_url, timeout)
        return None if client is None else cls(client)

    def put(self, task_id: str, image: bytes, seconds_to_deadline: float) -> None:
        """Keep ``image`` until the task's deadline plus :data:`GRACE_SECONDS` (RedisError on failure)."""
        ttl_ms = math.ceil((max(seconds_to_deadline, 0.0) + GRACE_SECONDS) * 1000)
        self.client.set(image_key(task_id), image, px=ttl_ms)

    def get(self, task_id: str) -> bytes | None:
        """The image of ``task_id``; None once deleted or expired."""
        data = self.client.get(image_key(task_id))
        return None if data is None else bytes(data)

    def delete(self, task_ids: Iterable[str]) -> None:
        """Forget the images of ``task_ids`` (one command for them all)."""
        keys = [image_key(task_id) for task_id in task_ids]
        if keys:
            self.client.delete(*keys)
