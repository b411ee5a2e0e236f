"""/healthz, /readyz (cached broker + worker ping) and /metrics."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from webapp import create_app, health


@pytest.fixture
def app() -> Iterator[Flask]:
    yield create_app({
        "TESTING": True,
        "READY_CACHE_SECONDS": 60.0,
        "CELERY": {"broker_url": "memory://", "result_backend": "redis://127.0.0.1:6379/15"},
    })


class Pings:
    """Stands in for the broker and worker pings; counts the calls."""

    def __init__(self) -> None:
        self.broker_error: Exception | None = None
        self.replies: list[dict[str, Any]] = [{"celery@host": {"ok": "pong"}}]
        self.calls = 0

    def broker(self, celery: Any) -> None:
        self.calls += 1
        if self.broker_error is not None:
            raise self.broker_error

    def workers(self, celery: Any) -> list[dict[str, Any]]:
        return self.replies


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> Pings:
    fake = Pings()
    monkeypatch.setattr(health, "ping_broker", fake.broker)
    monkeypatch.setattr(health, "ping_workers", fake.workers)
    return fake


def json_of(response: TestResponse) -> Any:
    """The response's JSON body (a failed assertion, not None, when there is none)."""
    assert response.is_json, response.data
    return response.json


def test_healthz(app: Flask) -> None:
    response = app.test_client().get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok"}


def test_ready_when_broker_and_worker_answer(app: Flask, pings: Pings) -> None:
    response = app.test_client().get("/readyz")
    assert response.status_code == 200 and response.json == {"status": "ok"}


def test_not_ready_without_workers(app: Flask, pings: Pings) -> None:
    pings.replies = []
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json == {"status": "unavailable", "reason": "no worker answered ping"}


def test_not_ready_without_broker(app: Flask, pings: Pings) -> None:
    pings.broker_error = ConnectionRefusedError("Connection refused")
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert "broker unreachable" in json_of(response)["reason"]


def test_ready_answer_is_cached(app: Flask, pings: Pings) -> None:
    client = app.test_client()
    for _ in range(5):
        assert client.get("/readyz").status_code == 200
    assert pings.calls == 1


def test_ready_answer_expires(app: Flask, pings: Pings) -> None:
    app.extensions["readiness"].cache_seconds = 0
    client = app.test_client()
    client.get("/readyz")
    pings.replies = []
    assert client.get("/readyz").status_code == 503
    assert pings.calls == 2


def test_metrics_label_route_pattern_not_path(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.extensions["result_waiter"], "fetch", lambda task_id: None)
    client = app.test_client()
    client.get("/tasks/abc123")
    client.get("/does-not-exist")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert 'webapp_http_requests_total{method="GET",route="/tasks/<task_id>",status="200"} 1.0' in text
    assert 'route="<unmatched>",status="404"' in text
    assert "abc123" not in text
    bucket = 'webapp_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/tasks/<task_id>"'
    assert bucket in text


_MULTIPROC_SCRIPT = """
from webapp import create_app
app = create_app({"CELERY": {"broker_url": "memory://", "result_backend": "redis://127.0.0.1:6379/15"}})
client = app.test_client()
client.get("/healthz")
print(client.get("/metrics").get_data(as_text=True))
"""


def test_metrics_multiprocess_mode_reads_shared_dir(tmp_path: Path) -> None:
    # prometheus_client picks its file-backed values at import, so this needs
    # a fresh interpreter with the variable set, as under gunicorn.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _MULTIPROC_SCRIPT], env=env, capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert 'webapp_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in out
    assert list(tmp_path.glob("counter_*.db"))
