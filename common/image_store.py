"""Uploads kept raw beside the queue on a Redis broker (claim check), not base64 in message and unacked hash.
Keyed by the task's own id, so a message never names another key; deleted once the result is stored."""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from common.broker import redis_client

__all__ = ["GRACE_SECONDS", "KEY_PREFIX", "ImageStore", "image_key"]
KEY_PREFIX = "inference:image:"
#: Seconds an image outlives its task's deadline: room for decoding and clock skew between hosts.
GRACE_SECONDS = 60.0


def image_key(task_id: str) -> str:
    return KEY_PREFIX + task_id


class ImageStore:
    """Images by task id in a Redis (any client with ``set``/``get``/``delete``)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    @classmethod
    def for_broker(cls, broker_url: str, timeout: float) -> ImageStore | None:
        """A store on the broker's Redis; None for RabbitMQ, whose messages carry their images."""
        client = redis_client(broker_url, timeout)
        return None if client is None else cls(client)

    def put(self, task_id: str, image: bytes, seconds_to_deadline: float) -> None:
        ttl_ms = math.ceil((max(seconds_to_deadline, 0.0) + GRACE_SECONDS) * 1000)
        self.client.set(image_key(task_id), image, px=ttl_ms)

    def get(self, task_id: str) -> bytes | None:
        """The image of ``task_id``; None once deleted or expired."""
        data = self.client.get(image_key(task_id))
        return None if data is None else bytes(data)

    def delete(self, task_ids: Iterable[str]) -> None:
        keys = [image_key(task_id) for task_id in task_ids]
        if keys:
            self.client.delete(*keys)
