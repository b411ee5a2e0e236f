"""``create_app``: WebSettings from the environment, then the test mapping, stored once, typed."""
from __future__ import annotations

from dataclasses import fields

import pytest

from common.config import ConfigError, WebSettings, load
from webapp import MULTIPART_OVERHEAD_BYTES, create_app
from webapp.admission import AmqpQueueLengths

_CELERY = {"broker_url": "memory://", "result_backend": "redis://127.0.0.1:6379/15"}


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No web setting in the environment; set the ones a test needs."""
    for field in fields(WebSettings):
        monkeypatch.delenv(field.metadata["env"], raising=False)
    return monkeypatch


def test_defaults_without_environment(environ: pytest.MonkeyPatch) -> None:
    app = create_app({"CELERY": _CELERY})
    settings = app.extensions["web_settings"]
    assert isinstance(settings, WebSettings) and settings == load(WebSettings, {})
    assert app.config["MAX_CONTENT_LENGTH"] == 10 * 1024 * 1024 + MULTIPART_OVERHEAD_BYTES
    assert "RESULT_TIMEOUT" not in app.config  # settings are not Flask config


def test_the_environment_overrides_defaults_and_the_test_config_both(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("MAX_UPLOAD_MB", "2")
    environ.setenv("USE_BATCH_PROCESSING", "on")
    environ.setenv("RESULT_TIMEOUT", "12")
    app = create_app({"CELERY": _CELERY, "USE_BATCH_PROCESSING": False})
    settings = app.extensions["web_settings"]
    assert app.config["MAX_CONTENT_LENGTH"] == 2 * 1024 * 1024 + MULTIPART_OVERHEAD_BYTES
    assert (settings.result_timeout, settings.use_batch_processing) == (12.0, False)
    assert create_app({"CELERY": _CELERY, "MAX_CONTENT_LENGTH": 1234}).config["MAX_CONTENT_LENGTH"] == 1234


@pytest.mark.parametrize(("name", "value"), [("RESULT_TIMEOUT", "soon"), ("USE_BATCH_PROCESSING", "maybe"),
                                             ("DEFAULT_TOP_K", "1001"), ("MAX_UPLOAD_MB", "0")])
def test_a_bad_environment_fails_at_startup_naming_it(environ: pytest.MonkeyPatch, name: str,
                                                      value: str) -> None:
    environ.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        create_app({"CELERY": _CELERY})


def test_apps_do_not_share_celery_settings(environ: pytest.MonkeyPatch) -> None:
    first, second = create_app(), create_app()
    assert first.config["CELERY"] is not second.config["CELERY"]
    first.config["CELERY"]["task_default_queue"] = "changed"
    assert second.config["CELERY"] == {}
    assert second.extensions["celery"].conf.task_default_queue != "changed"


@pytest.mark.parametrize(("env", "waiting", "bound"), [({}, 60, 0), ({"WEB_THREADS": "16"}, 12, 0), (
    {"MAX_WAITING_REQUESTS": "7", "MAX_SYNC_QUEUE_LENGTH": "7"}, 7, 7)])
def test_the_waiting_limit_defaults_below_gunicorns_threads_and_each_queue_gets_its_bound(
        environ: pytest.MonkeyPatch, env: dict[str, str], waiting: int, bound: int) -> None:
    for name, text in env.items():
        environ.setenv(name, text)
    dispatcher = create_app({"CELERY": _CELERY}).extensions["dispatcher"]
    queues = dispatcher.models.default_model.queues
    assert (dispatcher.waiting.limit, queues["sync"].limit, queues["async"].limit) == (waiting, bound, 200)
    assert (queues["sync"].name, queues["async"].name) == ("inference", "inference.async")


def test_each_queue_reads_rabbitmq_on_a_connection_of_its_own(environ: pytest.MonkeyPatch) -> None:
    app = create_app({"CELERY": {**_CELERY, "broker_url": "amqp://guest:guest@127.0.0.1:5672//"}})
    sync, asynchronous = (queue.length.client for queue in app.extensions["dispatcher"].models.default_model
                          .queues.values())
    assert isinstance(sync, AmqpQueueLengths) and isinstance(asynchronous, AmqpQueueLengths)
    assert sync is not asynchronous  # an AMQP connection must not serve two threads at once
