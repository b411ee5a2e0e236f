"""/healthz, /readyz (cached: the broker, and which queues the workers consume) and /metrics."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
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
    """Stands in for the broker ping and the workers' queue replies; counts the calls."""

    def __init__(self) -> None:
        self.broker_error: Exception | None = None
        self.replies: list[list[str]] = [["inference", "inference.async"]]
        self.calls = 0

    def broker(self, celery: Any) -> None:
        self.calls += 1
        if self.broker_error is not None:
            raise self.broker_error

    def workers(self, celery: Any) -> list[list[str]]:
        return self.replies


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> Pings:
    fake = Pings()
    monkeypatch.setattr(health, "ping_broker", fake.broker)
    monkeypatch.setattr(health, "worker_queues", fake.workers)
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
    assert response.status_code == 200 and response.json == {"status": "ok", "models_without_workers": []}


def test_not_ready_without_workers(app: Flask, pings: Pings) -> None:
    pings.replies = []
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.json == {
        "status": "unavailable", "models_without_workers": ["efficientnet_lite0"],
        "reason": "the default model efficientnet_lite0 cannot serve: no live worker consumes its queue "
                  "inference"}


def test_not_ready_when_the_workers_serve_other_queues(app: Flask, pings: Pings) -> None:
    pings.replies = [["inference.other", "inference.other.async"]]
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert json_of(response)["models_without_workers"] == ["efficientnet_lite0"]


def test_a_worker_that_misses_one_probe_still_counts_until_it_misses_two(app: Flask, pings: Pings) -> None:
    readiness = app.extensions["readiness"]
    readiness.cache_seconds = 0
    client = app.test_client()
    pings.replies = [["inference", "inference.async"]] * 2
    assert client.get("/readyz").status_code == 200
    pings.replies = []
    assert client.get("/readyz").status_code == 200
    # Counted as the last probe that saw them: two workers, not none.
    assert readiness.latest().live == {"inference": 2, "inference.async": 2}
    assert client.get("/readyz").status_code == 503


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
    pings.broker_error = ConnectionRefusedError("Connection refused")
    assert client.get("/readyz").status_code == 503
    assert pings.calls == 2


def test_metrics_label_route_pattern_not_path(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.extensions["result_waiter"], "fetch", lambda task_id: None)
    monkeypatch.setattr(app.extensions["accepted"], "owner", lambda task_id: "")  # accepted, pending
    client = app.test_client()
    client.get("/tasks/abc123")
    client.get("/does-not-exist")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    requests = 'webapp_http_requests_total{method="GET",model="",route="/tasks/<task_id>",status="200"} 1.0'
    assert requests in text
    assert 'route="<unmatched>",status="404"' in text
    assert "abc123" not in text
    bucket = ('webapp_http_request_duration_seconds_bucket{le="0.005",method="GET",model="",'
              'route="/tasks/<task_id>"')
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
    assert 'webapp_http_requests_total{method="GET",model="",route="/healthz",status="200"} 1.0' in out
    assert list(tmp_path.glob("counter_*.db"))


def test_ready_answers_within_its_budget_while_the_broker_hangs(app: Flask, pings: Pings,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    readiness = app.extensions["readiness"]
    readiness.cache_seconds, readiness.answer_within = 0, 0.2
    client = app.test_client()
    assert client.get("/readyz").status_code == 200  # a cached answer exists
    hung, release = threading.Event(), threading.Event()

    def hang(celery: Any) -> None:
        hung.set()
        release.wait(30)

    monkeypatch.setattr(health, "ping_broker", hang)
    try:
        # The stale answer, without waiting on the hung probe; one probe at a time.
        assert client.get("/readyz").status_code == 200
        assert hung.wait(10)
        assert client.get("/readyz").status_code == 200
        assert threading.active_count() < 50
    finally:
        release.set()


def test_first_answer_while_the_broker_hangs_is_not_ready(app: Flask, pings: Pings,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    monkeypatch.setattr(health, "ping_broker", lambda celery: release.wait(30))
    app.extensions["readiness"].answer_within = 0.2
    try:
        response = app.test_client().get("/readyz")
        assert response.status_code == 503 and "did not answer" in json_of(response)["reason"]
    finally:
        release.set()


def test_metrics_off_the_public_port(app: Flask) -> None:
    app.config["METRICS_PUBLIC"] = False
    assert app.test_client().get("/metrics").status_code == 404


def test_backlog_gauges_are_exported(app: Flask) -> None:
    text = app.test_client().get("/metrics").get_data(as_text=True)
    # memory:// broker: the queue length is unknown (-1).
    for line in ('webapp_queue_length{model="efficientnet_lite0",queue="inference"} -1.0',
                 'webapp_queue_length{model="efficientnet_lite0",queue="inference.async"} -1.0',
                 "webapp_waiting_requests 0.0",
                 "webapp_oldest_waiting_request_age_seconds 0.0"):
        assert line in text
