"""gunicorn settings from ``common.config.GunicornSettings`` (``webapp/gunicorn.conf.py``)."""
from __future__ import annotations

import runpy
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from common.config import ConfigError, GunicornSettings
from webapp import MULTIPART_OVERHEAD_BYTES
from webapp.gunicorn_worker import BufferingThreadWorker

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
    # gthread, reading each request whole before a thread takes it (webapp.gunicorn_worker).
    assert issubclass(conf["worker_class"], BufferingThreadWorker)
    assert conf["worker_class"].read_timeout == 30.0
    assert conf["worker_class"].max_body == 10 * 1024 * 1024 + MULTIPART_OVERHEAD_BYTES
    assert (conf["workers"], conf["threads"]) == (1, 64)
    assert (conf["timeout"], conf["graceful_timeout"]) == (60, 35)
    assert conf["accesslog"] is None
    assert conf["loglevel"] == "info"


def test_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    conf = load(monkeypatch, BIND_HOST="0.0.0.0", WEB_PORT="9000", WEB_WORKERS="3", WEB_THREADS="16",
                WEB_ACCESS_LOG="-", RESULT_TIMEOUT="120", WEB_LOG_LEVEL="WARNING",
                WEB_READ_TIMEOUT="2.5", MAX_UPLOAD_MB="1")
    assert conf["bind"] == "0.0.0.0:9000"
    assert conf["worker_class"].read_timeout == 2.5
    assert conf["worker_class"].max_body == 1024 * 1024 + MULTIPART_OVERHEAD_BYTES
    assert (conf["workers"], conf["threads"]) == (3, 16)
    assert conf["timeout"] > 120 and conf["graceful_timeout"] > 120
    assert conf["accesslog"] == "-"
    assert conf["loglevel"] == "warning"


@pytest.mark.parametrize(("name", "bad"), [("WEB_THREADS", "many"), ("WEB_READ_TIMEOUT", "0")])
def test_bad_variable_stops_gunicorn_naming_it(monkeypatch: pytest.MonkeyPatch, name: str, bad: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load(monkeypatch, **{name: bad})


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
