"""Configuration layering: defaults, then environment, then the test mapping."""
from __future__ import annotations

import pytest

from webapp import create_app, defaults
from webapp.settings import from_environ, parse_bool

_CELERY = {"broker_url": "memory://", "result_backend": "redis://127.0.0.1:6379/15"}


def test_from_environ_parses_known_variables() -> None:
    overrides = from_environ({
        "MAX_UPLOAD_MB": "2.5", "MAX_IMAGE_PIXELS": "1000", "RESULT_TIMEOUT": "12",
        "DEFAULT_TOP_K": "3", "USE_BATCH_PROCESSING": "TRUE", "UNRELATED": "x",
    })
    assert overrides == {"MAX_UPLOAD_MB": 2.5, "MAX_IMAGE_PIXELS": 1000, "RESULT_TIMEOUT": 12.0,
                         "DEFAULT_TOP_K": 3, "USE_BATCH_PROCESSING": True}


@pytest.mark.parametrize(
    ("name", "value"),
    [("MAX_UPLOAD_MB", "ten"), ("MAX_UPLOAD_MB", "0"), ("MAX_IMAGE_PIXELS", "-5"), ("RESULT_TIMEOUT", ""),
     ("DEFAULT_TOP_K", "0"), ("DEFAULT_TOP_K", "1001"), ("USE_BATCH_PROCESSING", "maybe")],
)
def test_from_environ_names_the_bad_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        from_environ({name: value})


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("yes", True), ("On", True), ("0", False),
                                               ("false", False), ("", False)])
def test_parse_bool(raw: str, expected: bool) -> None:
    assert parse_bool(raw) is expected


def test_defaults_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("MAX_UPLOAD_MB", "MAX_IMAGE_PIXELS", "RESULT_TIMEOUT", "DEFAULT_TOP_K",
                 "USE_BATCH_PROCESSING"):
        monkeypatch.delenv(name, raising=False)
    app = create_app({"CELERY": _CELERY})
    assert app.config["RESULT_TIMEOUT"] == defaults.RESULT_TIMEOUT
    assert app.config["USE_BATCH_PROCESSING"] is False
    assert app.config["MAX_UPLOAD_BYTES"] == 10 * 1024 * 1024
    assert app.config["MAX_CONTENT_LENGTH"] == 10 * 1024 * 1024 + defaults.MULTIPART_OVERHEAD_BYTES


def test_environment_overrides_defaults_and_test_config_overrides_both(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_UPLOAD_MB", "2")
    monkeypatch.setenv("USE_BATCH_PROCESSING", "true")
    monkeypatch.setenv("FLASK_SECRET_KEY", "from-env")
    app = create_app({"CELERY": _CELERY, "USE_BATCH_PROCESSING": False})
    assert app.config["MAX_CONTENT_LENGTH"] == 2 * 1024 * 1024 + defaults.MULTIPART_OVERHEAD_BYTES
    assert app.config["USE_BATCH_PROCESSING"] is False
    assert app.config["SECRET_KEY"] == "from-env"


def test_bad_environment_fails_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESULT_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="RESULT_TIMEOUT"):
        create_app({"CELERY": _CELERY})


def test_apps_do_not_share_celery_settings() -> None:
    first = create_app({"CELERY": dict(_CELERY)})
    first.config["CELERY"]["task_default_queue"] = "changed"
    assert create_app().config["CELERY"] == defaults.CELERY
