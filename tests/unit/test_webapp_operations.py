"""/healthz, /readyz (cached: the broker, and which queues the workers consume) and /metrics."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from deploy.stack import wait_until
from tests.unit.test_webapp_routes import CELERY, FakeQueue, json_of
from webapp import create_app, operations


@pytest.fixture
def app() -> Flask:
    return create_app({"TESTING": True, "READY_CACHE_SECONDS": 60.0, "CELERY": CELERY})


class Pings:
    """Stands in for the broker ping and the workers' queue replies; counts the pings."""

    def __init__(self) -> None:
        self.broker_error: Exception | None = None
        self.replies, self.calls = [["inference", "inference.async"]], 0

    def broker(self, celery: Any) -> None:
        self.calls += 1
        if self.broker_error is not None:
            raise self.broker_error

    def workers(self, celery: Any) -> list[list[str]]:
        return self.replies


@pytest.fixture
def pings(monkeypatch: pytest.MonkeyPatch) -> Pings:
    fake = Pings()
    monkeypatch.setattr(operations, "ping_broker", fake.broker)
    monkeypatch.setattr(operations, "worker_queues", fake.workers)
    return fake


def test_healthz_and_ready_when_the_broker_and_a_worker_answer_and_cached(app: Flask, pings: Pings) -> None:
    client = app.test_client()
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok"}
    for _ in range(5):
        response = client.get("/readyz")
        assert response.status_code == 200 and response.json == {"status": "ok", "models_without_workers": []}
    assert pings.calls == 1


def test_a_worker_that_misses_one_probe_still_counts_until_it_misses_two(app: Flask, pings: Pings) -> None:
    readiness = app.extensions["dispatcher"].readiness
    readiness.cache_seconds = 0
    client = app.test_client()
    pings.replies = [["inference", "inference.async"]] * 2
    assert client.get("/readyz").status_code == 200
    pings.replies = []
    assert client.get("/readyz").status_code == 200
    # Counted as the last probe that saw them: two workers, not none.
    assert readiness.latest().live == {"inference": 2, "inference.async": 2}
    assert client.get("/readyz").status_code == 503


def test_the_answer_expires_and_a_dead_broker_is_not_ready(app: Flask, pings: Pings) -> None:
    app.extensions["dispatcher"].readiness.cache_seconds = 0
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    pings.broker_error = ConnectionRefusedError("Connection refused")
    response = client.get("/readyz")
    assert response.status_code == 503 and "broker unreachable" in json_of(response)["reason"]
    assert pings.calls == 2


def test_while_the_broker_hangs_ready_answers_within_its_budget(app: Flask, pings: Pings,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    readiness = app.extensions["dispatcher"].readiness
    readiness.cache_seconds, readiness.answer_within = 0, 0.2
    client = app.test_client()
    hung, release = threading.Event(), threading.Event()

    def hang(celery: Any) -> None:
        hung.set()
        release.wait(30)

    monkeypatch.setattr(operations, "ping_broker", hang)
    try:  # no answer yet: not ready
        response = client.get("/readyz")
        assert response.status_code == 503 and "did not answer" in json_of(response)["reason"]
        release.set()  # that probe ends, ready
        assert wait_until(lambda: None if client.get("/readyz").status_code == 200 else "not yet", 10) >= 0
        hung.clear()
        release.clear()
        # The stale answer, without waiting on the hung probe; one probe at a time.
        assert client.get("/readyz").status_code == 200
        assert hung.wait(10)
        assert client.get("/readyz").status_code == 200
        assert threading.active_count() < 50
    finally:
        release.set()


def test_metrics_label_the_route_pattern_not_the_path(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = FakeQueue().install(app, monkeypatch)
    app.extensions["dispatcher"].accepted.record("abc123", "", 60.0)  # accepted, pending
    client = app.test_client()
    assert client.get("/tasks/abc123").status_code == 200 and queue.sent == []
    client.get("/does-not-exist")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    text = response.get_data(as_text=True)
    assert ('webapp_http_requests_total{method="GET",model="",route="/tasks/<task_id>",status="200"} 1.0'
            in text)
    assert 'route="<unmatched>",status="404"' in text and "abc123" not in text
    assert ('webapp_http_request_duration_seconds_bucket{le="0.005",method="GET",model="",'
            'route="/tasks/<task_id>"') in text
    # The backlog gauges; a memory:// broker's queue lengths are unknown (-1).
    for line in ('webapp_queue_length{model="efficientnet_lite0",queue="inference"} -1.0',
                 'webapp_queue_length{model="efficientnet_lite0",queue="inference.async"} -1.0',
                 "webapp_waiting_requests 0.0", "webapp_oldest_waiting_request_age_seconds 0.0"):
        assert line in text


_MULTIPROC_SCRIPT = """
import sys
from webapp.wsgi import app
bad = {"torch", "workers"} & set(sys.modules)
assert not bad, f"the web app imports {bad}"
client = app.test_client()
client.get("/healthz")
print(client.get("/metrics").get_data(as_text=True))
"""


def test_multiprocess_metrics_read_the_shared_dir_and_the_app_never_imports_torch(tmp_path: Path) -> None:
    # prometheus_client picks its file-backed values at import: a fresh interpreter, as under gunicorn.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "CELERY_BROKER_URL": "memory://"}
    out = subprocess.run([sys.executable, "-c", _MULTIPROC_SCRIPT], env=env, capture_output=True,
                         text=True, check=True, timeout=60).stdout
    assert 'webapp_http_requests_total{method="GET",model="",route="/healthz",status="200"} 1.0' in out
    assert "webapp_waiting_requests 0.0" in out
    assert list(tmp_path.glob("counter_*.db"))
