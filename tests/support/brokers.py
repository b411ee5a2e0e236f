"""The brokers the tests run against: Redis, and RabbitMQ in a vhost of the session's own.

:func:`celery_config` evaluates ``celeryconfig.py`` afresh for an environment, so a client app
gets exactly the settings a worker started with that environment gets.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from unittest import mock
from urllib.parse import quote, urlsplit, urlunsplit

from celery import Celery

from common.broker import is_amqp
from common.config import value
from deploy import amqpurl
from deploy.stack import ROOT

__all__ = ["TEST_AMQP_URL", "amqp_answers", "celery_config", "client_for", "private_vhost", "ready_messages"]

TEST_AMQP_URL: str = value("TEST_AMQP_URL")


def amqp_answers(url: str = TEST_AMQP_URL) -> bool:
    return amqpurl.ping(url)


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60)


@contextmanager
def private_vhost(url: str = TEST_AMQP_URL) -> Iterator[str]:
    """``url`` moved to a new vhost, deleted afterwards with its queues (needs a local RabbitMQ's
    ``rabbitmqctl``; otherwise the URL's own vhost)."""
    if shutil.which("rabbitmqctl") is None or not amqpurl.is_local(url):
        yield url
        return
    parts, vhost = urlsplit(url), f"tests-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    _rabbitmqctl("add_vhost", vhost)
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, parts.username or "guest", ".*", ".*", ".*")
        yield urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
    finally:
        _rabbitmqctl("delete_vhost", vhost)


def celery_config(**env: str) -> ModuleType:
    """``celeryconfig.py`` evaluated with ``env`` over this process' environment."""
    name = f"celeryconfig_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, ROOT / "celeryconfig.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with mock.patch.dict(os.environ, env):
        spec.loader.exec_module(module)
    return module


def client_for(broker_url: str, backend_url: str, queue: str) -> Celery:
    """A Celery app that sends and reads as the web app does."""
    app = Celery("tests-broker-client")
    app.config_from_object(celery_config(CELERY_BROKER_URL=broker_url, CELERY_RESULT_BACKEND=backend_url,
                                         CELERY_QUEUE=queue))
    return app


def ready_messages(app: Celery, queue: str) -> int:
    """Messages in ``queue`` that no consumer holds (RabbitMQ's ``message_count``; on Redis the list's
    length, which Redis deletes when it empties)."""
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        if not is_amqp(app.conf.broker_url):
            return int(channel.client.llen(queue))
        return int(channel.queue_declare(queue=queue, passive=True).message_count)
