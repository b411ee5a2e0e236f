"""The dispatcher's edges: the Celery handle, and sending by name (the rest: test_webapp_routes)."""
from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from kombu.exceptions import OperationalError

import celeryconfig
from common.contract import CLASSIFY_TASK
from common.image_store import ImageStore, image_key
from webapp import create_app
from webapp.dispatch import WEB_CELERY_SETTINGS, Deadline, WebRedisBackend, celery_init_app
from webapp.errors import ApiError

BACKEND = "redis://127.0.0.1:6379/15"  # never contacted


def make_flask(**celery: object) -> Flask:
    app = Flask("dispatch-test")
    app.config["CELERY"] = {"broker_url": "memory://", "result_backend": BACKEND, **celery}
    return app


def test_the_handle_is_celeryconfig_then_the_web_settings_then_the_apps() -> None:
    celery = celery_init_app(make_flask(task_default_queue="other", redis_backend_health_check_interval=9))
    assert (celery.conf.task_serializer, celery.conf.result_serializer) == ("msgpack", "json")
    assert celery.conf.task_acks_late is True and celery.conf.task_default_queue == "other"
    assert celery.conf.result_backend_thread_safe is True
    assert celery.conf.redis_backend_health_check_interval == 9
    assert celery.conf.task_publish_retry_policy["max_retries"] == 1
    assert "task_default_queue" not in WEB_CELERY_SETTINGS


def test_the_web_adds_a_health_check_on_redis_and_the_apps_options_win() -> None:
    celery = celery_init_app(make_flask(broker_url="redis://127.0.0.1:6399/0"))
    options = celery.conf.broker_transport_options  # celeryconfig's, and the web's health check
    assert options == {**celeryconfig.broker_transport_options, "health_check_interval": 30}
    celery = celery_init_app(make_flask(broker_url="redis://127.0.0.1:6399/0",
                                        broker_transport_options={"socket_timeout": 9.0}))
    assert celery.conf.broker_transport_options["socket_timeout"] == 9.0
    amqp = celery_init_app(make_flask(broker_url="amqp://guest@127.0.0.1:5699//"))
    assert amqp.conf.broker_transport_options == celeryconfig.broker_transport_options  # none of the web's


def test_a_redis_backend_keeps_its_url_but_subscribes_nothing_on_send() -> None:
    celery = celery_init_app(make_flask())
    backend = celery.backend
    assert isinstance(backend, WebRedisBackend)
    assert (backend.connparams["host"], backend.connparams["port"], backend.connparams["db"]) == \
        ("127.0.0.1", 6379, 15)
    result = celery.send_task(CLASSIFY_TASK, args=(b"img", 5))
    # Celery's own RedisBackend would have subscribed its ResultConsumer to this task's channel.
    assert result.id and backend.result_consumer.subscribed_to == set()
    assert backend.result_consumer._pubsub is None
    assert celery_init_app(make_flask(result_backend="cache+memory://")).conf.result_backend == "cache+memory://"


class DictRedis:
    """The three commands ``ImageStore`` uses, over a dict."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}

    def set(self, key: str, value: bytes, px: int) -> None:
        self.keys[key] = value

    def get(self, key: str) -> bytes | None:
        return self.keys.get(key)

    def delete(self, *keys: str) -> None:
        for key in keys:
            self.keys.pop(key, None)


def test_an_unsent_tasks_stored_image_is_deleted(monkeypatch: pytest.MonkeyPatch) -> None:
    dispatcher = create_app({"CELERY": {"broker_url": "memory://", "result_backend": BACKEND}}).extensions[
        "dispatcher"]
    images, stored = ImageStore(DictRedis()), []

    def refuse(*args: Any, **kwargs: Any) -> None:
        stored.append(dict(images.client.keys))
        raise OperationalError("down")

    monkeypatch.setattr(dispatcher, "images", images)
    monkeypatch.setattr(dispatcher.celery, "send_task", refuse)
    with pytest.raises(ApiError) as raised:
        dispatcher.send(dispatcher.models.default_model, b"\x89PNG...", 3, task_id="t1", asynchronous=False,
                        deadline=Deadline.after(30.0))
    assert raised.value.code == "broker_unavailable" and raised.value.headers() == {"Retry-After": "5"}
    assert stored == [{image_key("t1"): b"\x89PNG..."}] and images.client.keys == {}
