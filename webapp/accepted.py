"""Which async task ids this service accepted, and for whom.

Celery's result store cannot tell an unknown id from a pending one (both
have no key). ``/predict?async=true`` therefore writes ``task-accepted:<id>``
before sending, holding the hash of the caller's API key (empty without
keys), with a TTL of the task's deadline plus ``RESULT_EXPIRES``: as long as
its result can exist. ``/tasks/<id>`` answers 404 when neither exists.
"""
from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError

__all__ = ["KEY_PREFIX", "AcceptedTasks"]

KEY_PREFIX = "task-accepted:"


class AcceptedTasks:
    """Accepted-id records in the result store's Redis (``client``)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def record(self, task_id: str, owner: str, ttl: float) -> None:
        """Remember ``task_id`` (owned by key hash ``owner``) for ``ttl`` seconds."""
        self.client.set(KEY_PREFIX + task_id, owner.encode("ascii"), px=max(1, int(ttl * 1000)))

    def owner(self, task_id: str) -> str | None:
        """The owner recorded for ``task_id``, or None when it was never accepted or has expired."""
        raw = self.client.get(KEY_PREFIX + task_id)
        return None if raw is None else bytes(raw).decode("ascii", "replace")

    def forget(self, task_id: str) -> None:
        """Drop the record (its task could not be sent); best effort."""
        try:
            self.client.delete(KEY_PREFIX + task_id)
        except RedisError:
            pass
