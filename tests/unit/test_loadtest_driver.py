"""loadtest.driver: sessions against a stand-in stack with real locust, and the shared command line.

The stand-in project (tiny WSGI app under gunicorn, a worker exposing the
workers.metrics batch-size histogram) lives in a scratch folder: no Redis, no
model, a few seconds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from loadtest.driver import (
    Load,
    Options,
    Session,
    locust_command,
    locust_window,
    parse_plan_args,
    run_session,
    run_sessions,
)
from loadtest.progress import Progress
from loadtest.results import load_runs
from loadtest.stack import Variant
from tests.unit.test_loadtest_stack import stand_in_project
from workers.metrics import BATCH_SIZE_METRIC

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
WORKER = f"""
import os, sys, time
from prometheus_client import Histogram, start_http_server
if os.environ.get("BATCH_POLICY") == "crash":
    sys.exit("stand-in worker: told to crash")
sizes = Histogram("{BATCH_SIZE_METRIC}", "batch sizes", buckets=(1, 2, 4))
start_http_server(int(os.environ["WORKER_METRICS_PORT"]))
while True:
    sizes.observe(2)
    time.sleep(0.02)
"""


@pytest.fixture
def options(tmp_path: Path) -> Options:
    project = stand_in_project(tmp_path / "project", WSGI, WORKER)
    return Options(root=tmp_path / "run", redis_url="redis://127.0.0.1:6379/12", warmup_s=0.5,
                   project_root=project, flush_db=False, ready_timeout_s=60)


def test_load_checks_and_command() -> None:
    with pytest.raises(ValueError):
        Load(0, 10.0)
    with pytest.raises(ValueError):
        Load(2, 0.0)
    load = Load(10, 60.0, 2.0, ("seed",))
    assert load.run_time_s == 65  # the ramp-up, reset away by --reset-stats, plus the measured minute
    cmd = locust_command("http://h:1", load, Path("/tmp/x/locust"))
    assert cmd[1:3] == ["-m", "locust"] and cmd[-1] == "PhotoUploader"
    pairs = dict(zip(cmd, cmd[1:]))
    assert pairs["--users"] == "10" and pairs["--spawn-rate"] == "2" and pairs["--run-time"] == "65s"
    assert pairs["--csv"] == "/tmp/x/locust" and "--reset-stats" in cmd and "--headless" in cmd


def test_session_measures_each_load_and_leaves_no_process(options: Options) -> None:
    out = io.StringIO()
    variant = Variant("b2", {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "2"})
    session = Session(variant, (Load(1, 1.0, roles=("sweep",)), Load(3, 1.0, roles=("equal",))), 1, 0)
    dirs = run_session(session, options, Progress(4, 10.0, out))
    assert [d.name for d in dirs] == ["b2-u001-r1", "b2-u003-r1"]
    assert len(out.getvalue().splitlines()) == 4  # start, warm-up, two measurements
    assert (options.root / "stacks" / "b2-r1" / "warmup_stats.csv").exists()
    records = load_runs(options.root)
    assert [(r.users, r.roles, r.mode) for r in records] == [(1, ("sweep",), "batch"),
                                                             (3, ("equal",), "batch")]
    for r in records:
        assert r.stats.requests > 0 and r.stats.failures == 0
        assert r.mean_batch_client == 2.0 and r.per_image_ms_client == 15.0
        assert r.meta["locust_cpu_s"] > 0 and r.meta["stack_cpu_s"] >= 0
        assert r.worker is not None and r.worker.histograms[BATCH_SIZE_METRIC].count > 0
        assert r.mean_batch_worker == 2.0
        assert r.meta["env"] == {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "2"}
        assert r.answered == r.stats.requests - r.stats.failures
    assert not psutil.Process(os.getpid()).children(recursive=True)


def test_a_failing_variant_is_recorded_and_the_plan_goes_on(options: Options) -> None:
    crash = Variant("crash", {"BATCH_POLICY": "crash"})
    fine = Variant("fine", {"BATCH_POLICY": "timeout"})
    errors: list[str] = []
    dirs = run_sessions([Session(crash, (Load(1, 1.0),), 1, 0), Session(fine, (Load(1, 1.0),), 1, 1)],
                        options, errors, Progress(6, 10.0, io.StringIO()))
    assert [d.name for d in dirs] == ["fine-u001-r1"]
    assert errors == ["crash repeat 1: stack crash: worker exited with 1; last log lines:"]
    assert "told to crash" in (options.root / "stacks" / "crash-r1" / "worker.log").read_text()
    assert json.loads((dirs[0] / "run.json").read_text())["redis_url"] == "redis://127.0.0.1:6379/13"
    assert not psutil.Process(os.getpid()).children(recursive=True)


def _own(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=None)


def test_plan_args_fill_what_is_not_given() -> None:
    fill = {"repeats": (1, 2), "duration": (3.0, 60.0)}
    _, quick = parse_plan_args("compare", "x", ["--quick", "--duration", "5"], _own, fill)
    assert (quick.repeats, quick.duration, quick.warmup) == (1, 5.0, 1.0)
    _, full = parse_plan_args("compare", "x", ["--redis-url", "redis://127.0.0.1:6392/11"], _own, fill)
    assert (full.repeats, full.duration, full.warmup, full.redis_url) == (2, 60.0, 10.0, "redis://127.0.0.1:6392/11")


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--warmup", "-1"],
                                  ["--redis-url", "redis://127.0.0.1:6379/14", "--redis-db-span", "3"]])
def test_bad_plan_args_stop_before_anything_runs(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_plan_args("tune", "x", argv, _own, {"repeats": (1, 1), "duration": (3.0, 20.0)})
    assert exc.value.code == 2


def log_time(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


LOCUST_LOG = """\
[2025-03-01 10:00:00,100] host-1/INFO/locust.main: Starting Locust 2.47.0
[2025-03-01 10:00:00,200] host-1/INFO/locust.runners: Ramping to 20 users at a rate of 20.00 per second
[2025-03-01 10:00:00,900] host-1/INFO/locust.runners: Resetting stats

[2025-03-01 10:00:01,250] host-1/INFO/locust.runners: All users spawned: {"PhotoUploader": 20}
[2025-03-01 10:00:01,300] host-1/INFO/locust.runners: Resetting stats

[2025-03-01 10:00:31,450] host-1/INFO/locust.main: --run-time limit reached, shutting down
[2025-03-01 10:00:31,600] host-1/INFO/locust.main: Shutting down (exit code 0)
"""


def test_locust_window_runs_from_the_last_reset_to_the_run_time_limit() -> None:
    start, end = locust_window(LOCUST_LOG) or (0.0, 0.0)
    assert start == pytest.approx(log_time("2025-03-01 10:00:01,300"))
    assert end - start == pytest.approx(30.15)


@pytest.mark.parametrize("log", ["", LOCUST_LOG.replace("Resetting stats", "Reset"),
                                 LOCUST_LOG.replace("--run-time limit reached", "stopped")])
def test_locust_window_is_none_without_both_lines(log: str) -> None:
    assert locust_window(log) is None
