"""gunicorn settings from ``common.config.GunicornSettings`` (``webapp/gunicorn.conf.py``)."""
from __future__ import annotations

import runpy
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from common.config import ConfigError, GunicornSettings

CONF = Path(__file__).resolve().parents[2] / "webapp" / "gunicorn.conf.py"


def load(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    for field in fields(GunicornSettings):
        monkeypatch.delenv(field.metadata["env"], raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(CONF))


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load(monkeypatch)
    assert conf["bind"] == "127.0.0.1:8000"  # loopback unless asked otherwise
    assert conf["worker_class"] == "gthread"
    assert (conf["workers"], conf["threads"]) == (1, 64)
    assert (conf["timeout"], conf["graceful_timeout"]) == (60, 35)
    assert conf["accesslog"] is None
    assert conf["loglevel"] == "info"


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load(monkeypatch, BIND_HOST="0.0.0.0", WEB_PORT="9000", WEB_WORKERS="3", WEB_THREADS="16",
                WEB_ACCESS_LOG="-", RESULT_TIMEOUT="120", WEB_LOG_LEVEL="WARNING")
    assert conf["bind"] == "0.0.0.0:9000"
    assert (conf["workers"], conf["threads"]) == (3, 16)
    assert conf["timeout"] > 120 and conf["graceful_timeout"] > 120
    assert conf["accesslog"] == "-"
    assert conf["loglevel"] == "warning"


def test_bad_variable_stops_gunicorn_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="WEB_THREADS"):
        load(monkeypatch, WEB_THREADS="many")


def test_child_exit_drops_a_dead_workers_live_metrics(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    conf = load(monkeypatch, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    # The directory comes from the settings, not from prometheus_client's own read.
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    dead, alive = tmp_path / "gauge_liveall_4242.db", tmp_path / "gauge_liveall_4243.db"
    dead.touch()
    alive.touch()
    conf["child_exit"](None, SimpleNamespace(pid=4242))
    assert not dead.exists() and alive.exists()


def test_child_exit_without_multiprocess_metrics_does_nothing(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    conf = load(monkeypatch)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # read after start: ignored
    (tmp_path / "gauge_liveall_4242.db").touch()
    conf["child_exit"](None, SimpleNamespace(pid=4242))
    assert (tmp_path / "gauge_liveall_4242.db").exists()
