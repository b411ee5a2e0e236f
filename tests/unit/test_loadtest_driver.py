"""loadtest.driver: sessions against a stand-in stack with real locust, and the shared command line.

The stand-in project (tiny WSGI app under gunicorn, a worker exposing the
workers.metrics batch-size histogram) lives in a scratch folder: no Redis, no
model, a few seconds.
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from loadtest.driver import (
    Load,
    Options,
    Plan,
    Progress,
    Session,
    format_seconds,
    locust_command,
    locust_window,
    parse_metrics,
    parse_plan_args,
    run_plan,
    run_session,
)
from loadtest.results import load_runs
from loadtest.stack import Variant
from tests.unit.test_loadtest_stack import stand_in_project
from workers.metrics import BATCH_SIZE_METRIC, FORWARD_METRIC

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
    for bad in ((0, 10.0), (2, 0.0)):
        with pytest.raises(ValueError):
            Load(*bad)
    load = Load(10, 60.0, 2.0, ("seed",))
    assert load.run_time_s == 65  # the ramp-up, reset away by --reset-stats, plus the measured minute
    cmd = locust_command("http://h:1", load, Path("/tmp/x/locust"))
    pairs = dict(zip(cmd, cmd[1:]))
    assert pairs["--users"] == "10" and pairs["--spawn-rate"] == "2" and pairs["--run-time"] == "65s"
    assert pairs["--csv"] == "/tmp/x/locust" and "--reset-stats" in cmd and cmd[-1] == "PhotoUploader"


def test_session_measures_each_load_and_leaves_no_process(options: Options) -> None:
    variant = Variant("b2", {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "2"})
    session = Session(variant, (Load(1, 1.0, roles=("sweep",)), Load(3, 1.0, roles=("equal",))), 1, 0)
    dirs = run_session(session, options, Progress(4, 10.0))
    assert [d.name for d in dirs] == ["b2-u001-r1", "b2-u003-r1"]
    assert (options.root / "stacks" / "b2-r1" / "warmup_stats.csv").exists()
    records = load_runs(options.root)
    assert [(r.users, r.roles, r.mode) for r in records] == [(1, ("sweep",), "batch"), (3, ("equal",),
                                                                                        "batch")]
    for r in records:
        assert r.stats.requests > 0 and r.stats.failures == 0
        assert r.mean_batch_client == 2.0 and r.per_image_ms_client == 15.0
        assert r.mean_batch_worker == 2.0  # the histogram's difference over the run
        # CPU of every tree the stack started, and of locust, over locust's measured window
        assert {"worker", "web", "locust"} <= set(r.meta["cpu_s"]) and (r.cpu_ms(("locust",)) or 0) > 0
        assert r.cores_busy() is not None and r.others_busy() is not None
        assert r.meta["env"] == {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "2"}
    assert not psutil.Process(os.getpid()).children(recursive=True)


def test_a_failing_variant_is_recorded_and_the_plan_goes_on(options: Options, tmp_path: Path) -> None:
    crash, fine = Variant("crash", {"BATCH_POLICY": "crash"}), Variant("fine", {"BATCH_POLICY": "timeout"})
    sessions = [Session(crash, (Load(1, 1.0),), 1, 0), Session(fine, (Load(1, 1.0),), 1, 1)]
    _, args = parse_plan_args("compare", "x", ["--warmup", "0.5", "--csv-dir", str(options.root), "--keep-db",
                                                "--redis-url", "redis://127.0.0.1:6379/12"], _own,
                           {"repeats": (1, 1), "duration": (1.0, 1.0)})

    def report(run_dir: Path, out: Path) -> list[str]:
        return [r.variant for r in load_runs(run_dir)]

    plan = Plan("compare", sessions, {"extra": 1}, report,
                lambda s, url, log_dir: options.project_stack(s, url, log_dir))
    assert run_plan(plan, args, []) == 1
    recorded = json.loads((options.root / "plan.json").read_text())
    assert recorded["errors"] == ["crash repeat 1: stack crash: worker exited with 1; last log lines:"]
    assert recorded["extra"] == 1 and [v["name"] for v in recorded["variants"]] == ["crash", "fine"]
    assert [r.variant for r in load_runs(options.root)] == ["fine"]
    assert load_runs(options.root)[0].meta["redis_url"] == "redis://127.0.0.1:6379/13"
    assert not psutil.Process(os.getpid()).children(recursive=True)


def _own(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=None)


def test_plan_args_fill_what_is_not_given() -> None:
    fill = {"repeats": (1, 2), "duration": (3.0, 60.0)}
    _, quick = parse_plan_args("compare", "x", ["--quick", "--duration", "5"], _own, fill)
    assert (quick.repeats, quick.duration, quick.warmup) == (1, 5.0, 1.0)
    _, full = parse_plan_args("compare", "x", ["--redis-url", "redis://127.0.0.1:6392/11"], _own, fill)
    assert (full.repeats, full.duration, full.warmup, full.redis_url) == (2, 60.0, 10.0,
                                                                          "redis://127.0.0.1:6392/11")


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--warmup", "-1"],
                                  ["--redis-url", "redis://127.0.0.1:6379/14", "--redis-db-span", "3"]])
def test_bad_plan_args_stop_before_anything_runs(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_plan_args("tune", "x", argv, _own, {"repeats": (1, 1), "duration": (3.0, 20.0)})
    assert exc.value.code == 2


LOCUST_LOG = """\
[2025-03-01 10:00:00,100] host-1/INFO/locust.main: Starting Locust 2.47.0
[2025-03-01 10:00:00,900] host-1/INFO/locust.runners: Resetting stats
[2025-03-01 10:00:01,300] host-1/INFO/locust.runners: Resetting stats
[2025-03-01 10:00:31,450] host-1/INFO/locust.main: --run-time limit reached, shutting down
"""


def test_locust_window_runs_from_the_last_reset_to_the_run_time_limit() -> None:
    start, end = locust_window(LOCUST_LOG) or (0.0, 0.0)
    assert start == pytest.approx(datetime(2025, 3, 1, 10, 0, 1, 300000).timestamp())
    assert end - start == pytest.approx(30.15)
    for broken in ("", LOCUST_LOG.replace("Resetting stats", "Reset"), LOCUST_LOG.replace("--run-time", "x")):
        assert locust_window(broken) is None


def test_the_workers_histograms_are_summed_over_labels() -> None:
    text = (f'# TYPE {BATCH_SIZE_METRIC} histogram\n{BATCH_SIZE_METRIC}_count{{model="a"}} 3\n'
            f'{BATCH_SIZE_METRIC}_count{{model="b"}} 1\n{BATCH_SIZE_METRIC}_sum{{model="a"}} 9\n'
            f'# TYPE {FORWARD_METRIC} histogram\n{FORWARD_METRIC}_count 2\n{FORWARD_METRIC}_sum 0.5\n'
            '# TYPE other histogram\nother_count 7\n')
    assert parse_metrics(text) == {BATCH_SIZE_METRIC: (4.0, 9.0), FORWARD_METRIC: (2.0, 0.5)}


def test_progress_counts_phases_and_the_eta_follows_the_pace(capsys: pytest.CaptureFixture[str]) -> None:
    assert [format_seconds(s) for s in (5, 75, 3700)] == ["5s", "1m15s", "1h01m40s"]
    progress = Progress(2, 100.0)
    progress.start("first", 50.0)
    progress.finish()
    progress.skip(1, 50.0)
    assert progress.total_phases == 1 and progress.eta() == 0.0
    assert "[1/2 | elapsed 0s | ETA 1m40s] first" in capsys.readouterr().err
    with pytest.raises(ValueError):
        Progress(0, 1.0)
