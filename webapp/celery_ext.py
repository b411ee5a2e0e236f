"""The web app's Celery handle: sends tasks by name, never defines any.

Follows Flask's Celery example (``celery_init_app``), minus the task class:
the tasks live in ``workers`` and are sent with ``send_task``.
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from flask import Flask

from celery import Celery
from celery.backends.redis import RedisBackend

__all__ = ["WEB_CELERY_SETTINGS", "WEB_REDIS_TRANSPORT_OPTIONS", "WebRedisBackend", "celery_init_app"]

_REDIS_SCHEMES = frozenset({"redis", "rediss"})

#: Celery settings the web process applies over ``celeryconfig`` (and under
#: ``app.config["CELERY"]``).
WEB_CELERY_SETTINGS: Mapping[str, object] = MappingProxyType({
    # One backend instance shared by all request threads instead of one per
    # thread (the web process only reads keys through it; redis-py's pool is
    # thread-safe).
    "result_backend_thread_safe": True,
    # Fail fast instead of holding a request thread on a dead or paused
    # Redis: every socket read has a deadline, dead peers are noticed by
    # keepalive, idle connections are checked before use.
    "redis_socket_connect_timeout": 2.0,
    "redis_socket_timeout": 5.0,
    "redis_socket_keepalive": True,
    "redis_backend_health_check_interval": 30,
    "broker_connection_timeout": 2.0,
    # One quick retry (a pooled connection gone stale across a Redis
    # restart reconnects), then 503: Celery's default is 3 retries.
    "task_publish_retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.2,
                                  "interval_max": 0.2},
})

#: kombu's Redis transport options for the web's broker connections (merged
#: over celeryconfig's ``broker_transport_options``): a send to a paused
#: Redis fails after ``socket_timeout`` instead of blocking its thread.
WEB_REDIS_TRANSPORT_OPTIONS: Mapping[str, object] = MappingProxyType({
    "socket_timeout": 2.0,
    "socket_connect_timeout": 2.0,
    "socket_keepalive": True,
    "health_check_interval": 30,
})

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
    """Create the Celery app: ``celeryconfig``, ``WEB_CELERY_SETTINGS``, then ``app.config["CELERY"]``."""
    celery_app = Celery(app.name)
    celery_app.config_from_object("celeryconfig")
    base_options = dict(celery_app.conf.broker_transport_options or {})
    celery_app.conf.update(WEB_CELERY_SETTINGS)
    overrides = app.config.get("CELERY") or {}
    celery_app.conf.update(overrides)
    if str(celery_app.conf.broker_url).partition("://")[0] in _REDIS_SCHEMES:
        celery_app.conf.broker_transport_options = {
            **base_options, **WEB_REDIS_TRANSPORT_OPTIONS, **overrides.get("broker_transport_options", {})}
    celery_app.conf.result_backend = _web_backend_url(celery_app.conf.result_backend)
    # Not set_default(): the handle is always passed explicitly, and tests
    # build many apps in one process.
    app.extensions["celery"] = celery_app
    return celery_app
