"""loadtest.runner and loadtest.driver: a whole session against a stand-in stack, with real locust.

The stand-in project (tiny WSGI app under gunicorn, a worker exposing a Prometheus
histogram) lives in a scratch folder: no Redis, no model, a few seconds.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import psutil
import pytest

from loadtest.driver import Session, run_sessions
from loadtest.progress import Progress
from loadtest.results import load_runs
from loadtest.runner import Load, SessionOptions, locust_command, run_session
from loadtest.stack import Variant

WSGI = """
import json
def app(environ, start_response):
    if environ["PATH_INFO"] == "/readyz":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    timings = {"inference": 30.0, "queue": 1.0, "total": 5.0}
    body = {"prediction": "tabby", "batch_size": 2, "timings_ms": timings}
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]
"""
WORKER = """
import os, sys, time
from prometheus_client import Histogram, start_http_server
if os.environ.get("BATCH_POLICY") == "crash":
    sys.exit("stand-in worker: told to crash")
sizes = Histogram("stub_batch_size", "batch sizes", buckets=(1, 2, 4))
start_http_server(int(os.environ["WORKER_METRICS_PORT"]))
while True:
    sizes.observe(2)
    time.sleep(0.02)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "webapp").mkdir(parents=True)
    (root / "webapp" / "__init__.py").write_text("")
    (root / "webapp" / "wsgi.py").write_text(WSGI)
    (root / "webapp" / "gunicorn.conf.py").write_text("workers = 1\nthreads = 8\nworker_class = 'gthread'\n")
    (root / "workers").mkdir()
    (root / "workers" / "__init__.py").write_text("")
    (root / "workers" / "__main__.py").write_text(WORKER)
    return root


def test_load_checks_and_command() -> None:
    with pytest.raises(ValueError):
        Load(0, 10.0)
    with pytest.raises(ValueError):
        Load(2, 0.0)
    load = Load(10, 60.0, 2.0, ("seed",))
    assert load.run_time_s == 65
    cmd = locust_command("http://h:1", load, Path("/tmp/x/locust"))
    assert cmd[1:3] == ["-m", "locust"] and cmd[-1] == "PhotoUploader"
    pairs = dict(zip(cmd, cmd[1:]))
    assert pairs["--users"] == "10" and pairs["--spawn-rate"] == "2" and pairs["--run-time"] == "65s"
    assert pairs["--csv"] == "/tmp/x/locust" and "--reset-stats" in cmd and "--headless" in cmd


def test_session_measures_each_load_and_leaves_no_process(project: Path, tmp_path: Path) -> None:
    out = io.StringIO()
    options = SessionOptions(
        root=tmp_path / "run",
        redis_url="redis://127.0.0.1:6379/12",
        warmup_s=0.5,
        project_root=project,
        flush_db=False,
    )
    variant = Variant("b2", {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "2"})
    loads = (Load(1, 1.0, roles=("sweep",)), Load(3, 1.0, roles=("equal",)))
    dirs = run_session(
        variant, loads, repeat=1, db_offset=0, options=options, progress=Progress(4, 10.0, out)
    )
    assert [d.name for d in dirs] == ["b2-u001-r1", "b2-u003-r1"]
    assert len(out.getvalue().splitlines()) == 4  # start, warm-up, two measurements
    assert (tmp_path / "run" / "stacks" / "b2-r1" / "warmup_stats.csv").exists()
    records = load_runs(tmp_path / "run")
    assert [(r.users, r.roles, r.mode) for r in records] == [
        (1, ("sweep",), "batch"),
        (3, ("equal",), "batch"),
    ]
    for r in records:
        assert r.stats.requests > 0 and r.stats.failures == 0
        assert r.mean_batch_client == 2.0 and r.per_image_ms_client == 15.0
        assert r.meta["locust_cpu_s"] > 0 and r.meta["stack_cpu_s"] >= 0
        assert r.worker is not None and r.worker.histograms["stub_batch_size"].count > 0
        assert r.mean_batch_worker == 2.0
        assert r.meta["env"] == {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "2"}
        assert sum(b.requests for b in r.batches) == r.stats.requests - r.stats.failures
    assert not psutil.Process(os.getpid()).children(recursive=True)


def test_a_failing_variant_is_recorded_and_the_plan_goes_on(project: Path, tmp_path: Path) -> None:
    options = SessionOptions(
        root=tmp_path / "run",
        redis_url="redis://127.0.0.1:6379/12",
        warmup_s=0,
        project_root=project,
        flush_db=False,
        ready_timeout_s=60,
    )
    crash = Variant("crash", {"BATCH_POLICY": "crash"})
    fine = Variant("fine", {"BATCH_POLICY": "timeout"})
    plan: dict[str, list[str]] = {"errors": []}
    progress = Progress(4, 10.0, io.StringIO())
    dirs = run_sessions(
        [Session(crash, (Load(1, 1.0),), 1, 0), Session(fine, (Load(1, 1.0),), 1, 1)], options, plan, progress
    )
    assert [d.name for d in dirs] == ["fine-u001-r1"]
    assert len(plan["errors"]) == 1 and plan["errors"][0].startswith(
        "crash repeat 1: worker of stack crash exited"
    )
    assert "told to crash" in (tmp_path / "run" / "stacks" / "crash-r1" / "worker.log").read_text()
    assert json.loads((dirs[0] / "run.json").read_text())["redis_url"] == "redis://127.0.0.1:6379/13"
    assert not psutil.Process(os.getpid()).children(recursive=True)
