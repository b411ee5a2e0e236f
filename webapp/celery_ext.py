"""The web app's Celery handle: sends tasks by name, never defines any.

Follows Flask's Celery example (``celery_init_app``), minus the task class:
the tasks live in ``workers`` and are sent with ``send_task``.
"""
from __future__ import annotations

from typing import Any

from flask import Flask

from celery import Celery
from celery.backends.redis import RedisBackend

__all__ = ["WebRedisBackend", "celery_init_app"]

_REDIS_SCHEMES = frozenset({"redis", "rediss"})


class WebRedisBackend(RedisBackend):
    """Redis result backend for a process that only sends and reads results.

    Celery's backend subscribes its own ``ResultConsumer`` to every task's
    channel as the task is sent (``on_task_call``) and unsubscribes when the
    AsyncResult is collected: two round trips per request, under a lock, on a
    pubsub connection that nothing in the web process reads
    (``webapp.results.ResultWaiter`` does the listening).
    """

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Do not subscribe: ``ResultWaiter`` receives the result."""

    def on_result_fulfilled(self, result: Any) -> None:
        """Nothing to unsubscribe (see ``on_task_call``)."""


def _web_backend_url(url: Any) -> Any:
    """Route a ``redis://`` result backend URL to ``WebRedisBackend``."""
    if not isinstance(url, str) or url.partition("://")[0] not in _REDIS_SCHEMES:
        return url
    # Celery reads "<class path>+<url>" as "this backend class at this URL".
    return f"{WebRedisBackend.__module__}:{WebRedisBackend.__name__}+{url}"


def celery_init_app(app: Flask) -> Celery:
    """Create the Celery app from ``celeryconfig`` + ``app.config["CELERY"]``."""
    celery_app = Celery(app.name)
    celery_app.config_from_object("celeryconfig")
    celery_app.conf.update(app.config.get("CELERY") or {})
    celery_app.conf.result_backend = _web_backend_url(celery_app.conf.result_backend)
    # Not set_default(): the handle is always passed explicitly, and tests
    # build many apps in one process.
    app.extensions["celery"] = celery_app
    return celery_app
