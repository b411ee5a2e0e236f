"""The web app's Celery handle: celeryconfig + overrides, a non-subscribing backend."""
from __future__ import annotations

import subprocess
import sys

from flask import Flask

import celeryconfig
from common.contract import CLASSIFY_TASK
from webapp import create_app
from webapp.celery_ext import (
    WEB_CELERY_SETTINGS,
    WEB_REDIS_TRANSPORT_OPTIONS,
    WebRedisBackend,
    celery_init_app,
)


def make_flask(**celery: object) -> Flask:
    app = Flask("celery-ext-test")
    app.config["CELERY"] = celery
    return app


def test_loads_celeryconfig_then_app_overrides() -> None:
    celery = celery_init_app(make_flask(task_default_queue="other", broker_url="memory://",
                                        result_backend="redis://127.0.0.1:6379/15"))
    assert celery.conf.task_serializer == "msgpack"
    assert celery.conf.result_serializer == "json"
    assert celery.conf.task_acks_late is True
    assert celery.conf.task_default_queue == "other"


def test_web_settings_apply_under_the_app_overrides() -> None:
    celery = celery_init_app(make_flask(broker_url="memory://", result_backend="redis://127.0.0.1:6379/15",
                                        redis_socket_timeout=9.0))
    assert celery.conf.redis_socket_connect_timeout == WEB_CELERY_SETTINGS["redis_socket_connect_timeout"]
    assert celery.conf.broker_connection_timeout == WEB_CELERY_SETTINGS["broker_connection_timeout"]
    assert celery.conf.result_backend_thread_safe is True
    assert celery.conf.redis_socket_timeout == 9.0


def test_handle_lives_in_extensions() -> None:
    app = create_app({"CELERY": {"broker_url": "memory://", "result_backend": "redis://127.0.0.1:6379/15"}})
    assert app.extensions["celery"].conf.broker_url == "memory://"


def test_redis_backend_keeps_url_but_does_not_subscribe_on_send() -> None:
    celery = celery_init_app(make_flask(broker_url="memory://", result_backend="redis://127.0.0.1:6379/15"))
    backend = celery.backend
    assert isinstance(backend, WebRedisBackend)
    assert (backend.connparams["host"], backend.connparams["port"], backend.connparams["db"]) == \
        ("127.0.0.1", 6379, 15)
    result = celery.send_task(CLASSIFY_TASK, args=(b"img", 5))
    # Celery's own RedisBackend would have subscribed its ResultConsumer to
    # this task's channel, for as long as ``result`` lives.
    assert result.id and backend.result_consumer.subscribed_to == set()
    assert backend.result_consumer._pubsub is None


def test_other_backends_are_left_alone() -> None:
    celery = celery_init_app(make_flask(broker_url="memory://", result_backend="cache+memory://"))
    assert celery.conf.result_backend == "cache+memory://"


def test_webapp_never_imports_torch_or_workers() -> None:
    code = ("import sys, webapp.wsgi; bad = {'torch', 'workers'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_redis_broker_gets_socket_timeouts_and_keepalive_over_celeryconfig() -> None:
    celery = celery_init_app(make_flask(broker_url="redis://127.0.0.1:6399/0",
                                        result_backend="redis://127.0.0.1:6399/0"))
    options = celery.conf.broker_transport_options
    assert {k: options[k] for k in WEB_REDIS_TRANSPORT_OPTIONS} == dict(WEB_REDIS_TRANSPORT_OPTIONS)
    assert options["visibility_timeout"] > 0  # celeryconfig's are kept
    assert celery.conf.redis_socket_keepalive is True
    assert celery.conf.task_publish_retry_policy["max_retries"] == 1


def test_app_transport_options_win_and_other_brokers_get_none() -> None:
    celery = celery_init_app(make_flask(broker_url="redis://127.0.0.1:6399/0",
                                        result_backend="redis://127.0.0.1:6399/0",
                                        broker_transport_options={"socket_timeout": 9.0}))
    assert celery.conf.broker_transport_options["socket_timeout"] == 9.0
    amqp = celery_init_app(make_flask(broker_url="amqp://guest@127.0.0.1:5699//",
                                      result_backend="redis://127.0.0.1:6399/0"))
    assert amqp.conf.broker_transport_options == celeryconfig.broker_transport_options
