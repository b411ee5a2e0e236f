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


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load(monkeypatch)
    assert "bind" not in conf  # deploy.stack gives --bind: the socket nginx sends requests to
    assert conf["worker_class"] == "gthread"  # stock: nginx in front reads requests whole
    assert (conf["workers"], conf["threads"], conf["timeout"], conf["graceful_timeout"]) == (1, 64, 60, 35)
    assert conf["keepalive"] > 60 and conf["loglevel"] == "info"  # above nginx's upstream keepalive_timeout
    conf = load(monkeypatch, WEB_WORKERS="3", WEB_THREADS="16", RESULT_TIMEOUT="120", LOG_LEVEL="WARNING")
    assert (conf["workers"], conf["threads"], conf["loglevel"]) == (3, 16, "warning")  # gunicorn's spelling
    assert conf["timeout"] > 120 and conf["graceful_timeout"] > 120
    with pytest.raises(ConfigError, match="WEB_THREADS"):  # a bad variable stops gunicorn, naming it
        load(monkeypatch, WEB_THREADS="many")


def test_child_exit_drops_a_dead_workers_live_metrics(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    dead, alive = tmp_path / "gauge_liveall_4242.db", tmp_path / "gauge_liveall_4243.db"
    dead.touch()
    alive.touch()
    conf = load(monkeypatch)  # without multi-process metrics, nothing
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # set after the start: ignored
    conf["child_exit"](None, SimpleNamespace(pid=4242))
    assert dead.exists()
    conf = load(monkeypatch, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")  # the directory comes from the settings
    conf["child_exit"](None, SimpleNamespace(pid=4242))
    assert not dead.exists() and alive.exists()
