"""``create_app``: WebSettings from the environment, then the test mapping."""
from __future__ import annotations

from dataclasses import fields
from typing import Any

import pytest

from common.config import ConfigError, WebSettings
from common.contract import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_TOP_K
from webapp import MULTIPART_OVERHEAD_BYTES, create_app
from webapp.admission import AmqpQueueLengths
from webapp.celery_ext import WEB_CELERY_SETTINGS

_CELERY = {"broker_url": "memory://", "result_backend": "redis://127.0.0.1:6379/15"}


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No web setting in the environment; set the ones a test needs."""
    for field in fields(WebSettings):
        monkeypatch.delenv(field.metadata["env"], raising=False)
    return monkeypatch


def test_every_setting_is_an_upper_case_config_key(environ: pytest.MonkeyPatch) -> None:
    config = create_app({"CELERY": _CELERY}).config
    assert {f.name.upper() for f in fields(WebSettings)} <= set(config)


def test_defaults_without_environment(environ: pytest.MonkeyPatch) -> None:
    config = create_app({"CELERY": _CELERY}).config
    assert config["RESULT_TIMEOUT"] == 30.0 and config["RESULT_POLL_INTERVAL"] == 0.5
    assert config["USE_BATCH_PROCESSING"] is False
    assert config["DEFAULT_TOP_K"] == DEFAULT_TOP_K
    assert config["MAX_IMAGE_PIXELS"] == DEFAULT_MAX_IMAGE_PIXELS
    assert config["BROKER_RETRY_AFTER"] == 5 and config["READY_CACHE_SECONDS"] == 2.0
    assert config["PROMETHEUS_MULTIPROC_DIR"] is None
    assert config["MAX_UPLOAD_BYTES"] == 10 * 1024 * 1024
    assert config["MAX_CONTENT_LENGTH"] == 10 * 1024 * 1024 + MULTIPART_OVERHEAD_BYTES


def test_environment_overrides_defaults_and_test_config_overrides_both(environ: pytest.MonkeyPatch) -> None:
    environ.setenv("MAX_UPLOAD_MB", "2")
    environ.setenv("USE_BATCH_PROCESSING", "on")
    environ.setenv("RESULT_TIMEOUT", "12")
    app = create_app({"CELERY": _CELERY, "USE_BATCH_PROCESSING": False})
    assert app.config["MAX_CONTENT_LENGTH"] == 2 * 1024 * 1024 + MULTIPART_OVERHEAD_BYTES
    assert app.config["RESULT_TIMEOUT"] == 12.0
    assert app.config["USE_BATCH_PROCESSING"] is False


def test_test_config_max_content_length_is_kept(environ: pytest.MonkeyPatch) -> None:
    assert create_app({"CELERY": _CELERY, "MAX_CONTENT_LENGTH": 1234}).config["MAX_CONTENT_LENGTH"] == 1234


@pytest.mark.parametrize(("name", "value"), [("RESULT_TIMEOUT", "soon"), ("USE_BATCH_PROCESSING", "maybe"),
                                             ("DEFAULT_TOP_K", "1001"), ("MAX_UPLOAD_MB", "0")])
def test_bad_environment_fails_at_startup_naming_it(environ: pytest.MonkeyPatch, name: str,
                                                    value: str) -> None:
    environ.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        create_app({"CELERY": _CELERY})


def test_apps_do_not_share_celery_settings(environ: pytest.MonkeyPatch) -> None:
    first, second = create_app(), create_app()
    assert first.config["CELERY"] is not second.config["CELERY"]
    first.config["CELERY"]["task_default_queue"] = "changed"
    assert second.config["CELERY"] == {}
    assert "task_default_queue" not in WEB_CELERY_SETTINGS
    conf: Any = second.extensions["celery"].conf
    assert conf.task_default_queue != "changed"



@pytest.mark.parametrize(("env", "bound"), [({}, 0), ({"MAX_SYNC_QUEUE_LENGTH": "7"}, 7)])
def test_each_queue_gets_its_own_bound(environ: pytest.MonkeyPatch, env: dict[str, str], bound: int) -> None:
    for name, text in env.items():
        environ.setenv(name, text)
    queues = create_app({"CELERY": _CELERY}).extensions["models"].default_model.queues
    assert (queues["sync"].limit, queues["async"].limit) == (bound, 200)
    assert (queues["sync"].name, queues["async"].name) == ("inference", "inference.async")


def test_each_queue_reads_rabbitmq_on_a_connection_of_its_own(environ: pytest.MonkeyPatch) -> None:
    app = create_app({"CELERY": {**_CELERY, "broker_url": "amqp://guest:guest@127.0.0.1:5672//"}})
    queues = app.extensions["models"].default_model.queues
    sync, asynchronous = (queues[kind].length.client for kind in ("sync", "async"))
    assert isinstance(sync, AmqpQueueLengths) and isinstance(asynchronous, AmqpQueueLengths)
    assert sync is not asynchronous  # an AMQP connection must not serve two threads at once
