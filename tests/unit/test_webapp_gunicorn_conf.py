"""gunicorn settings read from the environment (``webapp/gunicorn.conf.py``)."""
from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import pytest

CONF = Path(__file__).resolve().parents[2] / "webapp" / "gunicorn.conf.py"
_VARIABLES = ("WEB_PORT", "WEB_WORKERS", "WEB_THREADS", "WEB_ACCESS_LOG", "RESULT_TIMEOUT")


def load(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    for name in _VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(CONF))


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load(monkeypatch)
    assert conf["bind"] == "0.0.0.0:8000"
    assert conf["worker_class"] == "gthread"
    assert (conf["workers"], conf["threads"]) == (1, 64)
    assert conf["timeout"] > 30
    assert conf["accesslog"] is None


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load(monkeypatch, WEB_PORT="9000", WEB_WORKERS="3", WEB_THREADS="16", WEB_ACCESS_LOG="-",
                RESULT_TIMEOUT="120")
    assert conf["bind"] == "0.0.0.0:9000"
    assert (conf["workers"], conf["threads"]) == (3, 16)
    assert conf["timeout"] > 120 and conf["graceful_timeout"] > 120
    assert conf["accesslog"] == "-"
