"""loadtest.driver: CPU of real process trees, the plan's order and command line, and real locust
against a stand-in stack (a tiny WSGI app behind the real web tier; no Redis, no model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest
from prometheus_client import CollectorRegistry, Histogram, start_http_server

from loadtest import driver
from loadtest.driver import Load, Plan, Progress, Sampler, Session
from loadtest.results import MACHINE, load_runs
from loadtest.stack import Stack, Variant
from tests.unit.test_loadtest_stack import stand_in_project
from workers.metrics import BATCH_SIZE_METRIC, FORWARD_METRIC


def test_a_tree_keeps_what_its_exited_processes_used_and_the_window_interpolates() -> None:
    burn = "import time\nend = time.process_time() + {}\nwhile time.process_time() < end: pass\n"
    # the child burns 0.3 s after its own child has burnt 0.4 s, exited and been reaped (counted once)
    grandchild = f"subprocess.run([sys.executable, '-c', {burn.format(0.4)!r}])\n"
    tree = subprocess.Popen([sys.executable, "-c", f"import subprocess, sys\n{grandchild}{burn.format(0.3)}"])
    sampler = Sampler({"tree": tree.pid})
    while tree.poll() is None:
        sampler.sample()
        time.sleep(0.05)
    sampler.sample()
    used = sampler.window(sampler.times[0], sampler.times[-1])
    assert 0.65 <= used["tree"] <= 1.05 and used[MACHINE] >= used["tree"] - 0.05
    sampler.times, sampler.series = [100.0, 101.0, 103.0], {"web": [1.0, 2.0, 6.0]}
    assert sampler.window(100.5, 102.0) == {"web": pytest.approx(2.5)}
    assert sampler.window(50.0, 200.0) == {"web": pytest.approx(5.0)}  # flat outside the samples


def test_loads_plans_and_progress(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ((0, 10.0), (2, 0.0)):
        with pytest.raises(ValueError):
            Load(*bad)
    assert Load(10, 60.0, 2.0, ("seed",)).run_time_s == 65  # the ramp-up (reset away) and the measured minute
    assert driver.merge_loads([(20, "high"), (2, "low"), (2, "also")]) == {2: ("low", "also"), 20: ("high",)}
    variants = [Variant("a"), Variant("b", {"USE_BATCH_PROCESSING": "true"}), Variant("c")]
    sessions = driver.alternate(variants, lambda v: (Load(1 if v.mode == "batch" else 2, 1.0),), 2)
    assert [(s.variant.name, s.repeat, s.db_offset) for s in sessions] == [
        (name, repeat, offset) for repeat in (1, 2) for offset, name in enumerate("abc")]
    assert [s.loads[0].users for s in sessions[:3]] == [2, 1, 2]
    progress = Progress(12, started=time.monotonic() - 100)
    progress.phase("first")
    progress.total -= 1  # a phase of a failed session
    progress.phase("second")  # 100 s for the one done: 10 left, this one included
    assert capsys.readouterr().err.splitlines() == ["[ 1/12 | elapsed 0:01:40 | ETA ?] first",
                                                    "[ 2/11 | elapsed 0:01:40 | ETA 0:16:40] second"]


def test_locusts_window_and_the_workers_histograms_are_read() -> None:
    log = ("[2025-03-01 10:00:00,900] h/INFO/locust.runners: Resetting stats\n"
           "[2025-03-01 10:00:01,300] h/INFO/locust.runners: Resetting stats\n"
           "[2025-03-01 10:00:31,450] h/INFO/locust.main: --run-time limit reached, shutting down\n")
    reset, limit = (datetime(2025, 3, 1, 10, 0, s, ms * 1000).timestamp() for s, ms in ((1, 300), (31, 450)))
    assert driver.locust_window(log) == pytest.approx((reset, limit))  # the last reset, the first limit
    for broken in ("", log.replace("Resetting stats", "Reset"), log.replace("--run-time", "x")):
        assert driver.locust_window(broken) is None
    registry = CollectorRegistry()  # as if of two workers: two label sets, a histogram not read
    sizes = Histogram(BATCH_SIZE_METRIC, "x", ["model"], registry=registry)
    sizes.labels("a").observe(3)
    sizes.labels("b").observe(1)
    Histogram(FORWARD_METRIC, "x", registry=registry).observe(0.25)
    Histogram("other", "x", registry=registry).observe(7)
    server = start_http_server(0, "127.0.0.1", registry)[0]
    urls = [f"http://127.0.0.1:{server.server_port}/metrics"] * 2
    assert driver.scrape_metrics(urls) == {(BATCH_SIZE_METRIC, "count"): 4.0, (BATCH_SIZE_METRIC, "sum"): 8.0,
                                           (FORWARD_METRIC, "count"): 2.0, (FORWARD_METRIC, "sum"): 0.5}
    server.shutdown()
    server.server_close()
    assert driver.scrape_metrics(urls) is None and driver.scrape_metrics([]) is None  # it stopped; none


CLI = driver.PlanCLI("compare", "x", lambda add: add("--duration", type=float), {"duration": (3.0, 60.0)},
                     lambda args: Plan("compare", [], {}, lambda run_dir, out: []))


@pytest.mark.parametrize(("argv", "expected"), [
    (["--quick", "--duration", "5"], (1, 5.0, 1.0)), (["--redis-url", "redis://h:6392/11"], (2, 60.0, 10.0)),
    (["--repeats", "0"], None), (["--warmup", "-1"], None), (["--duration", "0"], None),
    (["--redis-url", "redis://127.0.0.1:6379/14", "--redis-db-span", "3"], None)])
def test_plan_options_fill_in_and_bad_ones_stop_first(argv: list[str], expected: tuple | None) -> None:
    if expected is None:
        with pytest.raises(SystemExit, match="^2$"):  # a usage error
            CLI.parse(argv)
    else:
        args, _ = CLI.parse(argv)
        assert (args.repeats, args.duration, args.warmup) == expected


def test_a_failing_variant_is_recorded_and_the_plan_measures_the_rest(tmp_path: Path) -> None:
    root, project = tmp_path / "run", stand_in_project(tmp_path / "project")
    crash = Variant("crash", {"BATCH_POLICY": "crash"})
    b2 = Variant("b2", {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "2"})
    args, _ = CLI.parse(["--warmup", "0.5", "--csv-dir", str(root), "--keep-db", "--ready-timeout", "60",
                         "--redis-url", "redis://127.0.0.1:6379/7"])
    loads = (Load(1, 1.0, roles=("sweep",)), Load(3, 1.0, roles=("equal",)))
    plan = Plan("compare", [Session(crash, loads[:1], 1, 0), Session(b2, loads, 1, 1)], {"extra": 1},
                lambda run_dir, out: [r.variant for r in load_runs(run_dir)],
                lambda s, url, log_dir: Stack(s.variant, redis_url=url, log_dir=log_dir, project_root=project,
                                              flush=False))
    assert driver.run_plan(args, plan, []) == 1
    recorded = json.loads((root / "plan.json").read_text())
    assert recorded["errors"] == ["crash repeat 1: stack crash: worker exited with 1; last log lines:"]
    assert recorded["extra"] == 1 and [v["name"] for v in recorded["variants"]] == ["crash", "b2"]
    assert (root / "stacks" / "b2-r1" / "warmup" / "locust_stats.csv").exists()
    recs = load_runs(root)
    assert [(r.path.name, r.users, r.roles, r.mode, r.meta["redis_url"]) for r in recs] == [
        ("b2-u001-r1", 1, ("sweep",), "batch", "redis://127.0.0.1:6379/8"),
        ("b2-u003-r1", 3, ("equal",), "batch", "redis://127.0.0.1:6379/8")]
    for r in recs:
        assert r.stats.requests > 0 and r.stats.failures == 0
        assert (r.mean_batch_client, r.per_image_ms_client, r.mean_batch_worker) == (2.0, 15.0, 2.0)
        # CPU of every tree the stack started, and of locust, over locust's measured window
        assert {"worker", "web", "nginx", "locust"} <= set(r.cpu_by_tree) and (r.cpu_ms(("locust",)) or 0) > 0
        assert r.cores_busy() is not None and r.others_busy() is not None
        pairs = dict(zip(r.meta["command"], r.meta["command"][1:]))
        assert (pairs["--users"], pairs["--spawn-rate"], pairs["--run-time"]) == (str(r.users),) * 2 + ("2s",)
    assert not psutil.Process(os.getpid()).children(recursive=True)
