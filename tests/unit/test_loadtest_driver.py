"""loadtest.driver: /proc CPU accounting, the plan's order, the shared command line, and sessions with
real locust against a stand-in stack (a tiny WSGI app behind the real web tier; no Redis, no model)."""

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

from loadtest import driver
from loadtest.driver import Load, Options, Plan, ProcStat, Progress, Sample, Sampler, Session, TreeCounter
from loadtest.results import MACHINE, load_runs
from loadtest.stack import Variant
from tests.unit.test_loadtest_stack import stand_in_project
from workers.metrics import BATCH_SIZE_METRIC, FORWARD_METRIC


def stat_line(pid: int, ppid: int, utime: int, stime: int, start: int, comm: str = "python") -> str:
    """A /proc/<pid>/stat line with the fields the accounting reads (others zero, in proc(5)'s order)."""
    fields = ["S", str(ppid)] + ["0"] * 9 + [str(utime), str(stime), "7", "8"] + ["0"] * 4 + [str(start)]
    return f"{pid} ({comm}) " + " ".join(fields + ["0"] * 30) + "\n"


def test_proc_stat_lines_and_the_machine_line_are_parsed(tmp_path: Path) -> None:
    # cutime/cstime (7, 8 here) are left out: a reaped child would be counted twice
    assert driver.parse_stat(stat_line(1234, 1, 150, 50, 9, comm="a (b) c) d")) == ProcStat(1234, 1, 9, 200)
    own = driver.parse_stat(Path("/proc/self/stat").read_text())
    assert own.ppid > 0 and own.start_ticks > 0
    for text in ("", "1234 python S 1", "1234 (python) S 1 2 3"):
        with pytest.raises(ValueError):
            driver.parse_stat(text)
    for pid, line in {10: stat_line(10, 1, 5, 5, 100), 11: stat_line(11, 10, 1, 2, 200),
                      12: "garbage"}.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(line)
    (tmp_path / "13").mkdir()  # exited between listing and reading: no stat file
    stats = driver.read_stats(tmp_path)
    assert sorted(stats) == [10, 11] and stats[11].ppid == 10 and stats[11].cpu_ticks == 3
    ticks = driver.CLOCK_TICKS
    busy = f"cpu  {ticks} {ticks} {ticks} {50 * ticks} {9 * ticks} {ticks} {ticks} {ticks} 0 0\nintr 1\n"
    assert driver.machine_busy_seconds(busy) == pytest.approx(6.0)  # not idle, not iowait
    with pytest.raises(ValueError):
        driver.machine_busy_seconds("intr 1\n")


def test_a_tree_keeps_what_exited_processes_used_and_tells_reused_pids_apart() -> None:
    assert driver.descendants({1: 0, 10: 1, 11: 10, 12: 11, 13: 10, 20: 1}, 10) == {10, 11, 12, 13}
    assert driver.descendants({1: 0}, 99) == set()
    ticks, counter = driver.CLOCK_TICKS, TreeCounter(10)

    def stats(*procs: tuple[int, int, int, int]) -> dict[int, ProcStat]:
        return {pid: ProcStat(pid, ppid, start, cpu) for pid, ppid, start, cpu in procs}
    assert counter.update(stats((1, 0, 1, 0), (10, 1, 5, ticks), (11, 10, 6, ticks))) == pytest.approx(2.0)
    # 11 exited (its time stays counted); 12 appeared
    assert counter.update(stats((10, 1, 5, 2 * ticks), (12, 10, 7, ticks // 2))) == pytest.approx(3.5)
    # pid 11 reused by a new process (another start time): counted on its own
    assert counter.update(stats((10, 1, 5, 2 * ticks), (11, 10, 9, ticks))) == pytest.approx(4.5)
    assert counter.update(stats((1, 0, 1, 0))) == pytest.approx(4.5)  # the root exited: nothing lost


def test_the_window_interpolates_between_samples() -> None:
    samples = [Sample(100.0, {"web": 1.0}), Sample(101.0, {"web": 2.0, "locust": 0.5}),
               Sample(103.0, {"web": 6.0, "locust": 1.5})]
    assert [driver.at(samples, "web", t) for t in (50.0, 100.5, 102.0, 200.0)] == [1.0, 1.5, 4.0, 6.0]
    assert driver.at(samples, "locust", 100.0) == 0.5 and driver.at(samples, "redis", 101.0) is None
    assert driver.window(samples, 100.5, 102.0) == {"web": pytest.approx(2.5), "locust": pytest.approx(0.5)}


def test_the_sampler_measures_a_busy_child() -> None:
    busy = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\n"
    with Sampler(interval=0.05) as sampler:
        child = subprocess.Popen([sys.executable, "-c", busy])
        sampler.track("child", child.pid)
        child.wait(timeout=30)
        time.sleep(0.1)
    used = driver.window(sampler.samples, sampler.samples[0].t, sampler.samples[-1].t)
    assert 0.3 <= used["child"] <= 2.0 and used[MACHINE] >= used["child"] - 0.05
    for name in (MACHINE, "child"):
        with pytest.raises(ValueError):
            sampler.track(name, child.pid)


def test_loads_plans_and_progress(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ((0, 10.0), (2, 0.0)):
        with pytest.raises(ValueError):
            Load(*bad)
    load = Load(10, 60.0, 2.0, ("seed",))
    assert load.run_time_s == 65  # the ramp-up, reset away by --reset-stats, plus the measured minute
    cmd = driver.locust_command("http://h:1", load, Path("/tmp/x/locust"))
    pairs = dict(zip(cmd, cmd[1:]))
    assert (pairs["--users"], pairs["--spawn-rate"], pairs["--run-time"]) == ("10", "2", "65s")
    assert "--reset-stats" in cmd and cmd[-1] == "PhotoUploader"
    assert driver.merge_loads([(20, "high"), (2, "low"), (2, "also")]) == {2: ("low", "also"), 20: ("high",)}
    variants = [Variant("a"), Variant("b", {"USE_BATCH_PROCESSING": "true"}), Variant("c")]
    sessions = driver.alternate(variants, lambda v: (Load(1 if v.mode == "batch" else 2, 1.0),), 2)
    assert [(s.variant.name, s.repeat, s.db_offset) for s in sessions] == [
        (name, repeat, offset) for repeat in (1, 2) for offset, name in enumerate("abc")]
    assert [s.loads[0].users for s in sessions[:3]] == [2, 1, 2]
    assert [driver.format_seconds(s) for s in (5, 75, 3700)] == ["5s", "1m15s", "1h01m40s"]
    progress = Progress(2, 100.0)
    progress.start("first", 50.0)
    progress.finish()
    progress.skip(1, 50.0)
    assert progress.total_phases == 1 and progress.eta() == 0.0
    assert "[1/2 | elapsed 0s | ETA 1m40s] first" in capsys.readouterr().err


def test_locusts_window_and_the_workers_histograms_are_read() -> None:
    log = ("[2025-03-01 10:00:00,900] h/INFO/locust.runners: Resetting stats\n"
           "[2025-03-01 10:00:01,300] h/INFO/locust.runners: Resetting stats\n"
           "[2025-03-01 10:00:31,450] h/INFO/locust.main: --run-time limit reached, shutting down\n")
    start, end = driver.locust_window(log) or (0.0, 0.0)
    assert start == pytest.approx(datetime(2025, 3, 1, 10, 0, 1, 300000).timestamp())
    assert end - start == pytest.approx(30.15)
    for broken in ("", log.replace("Resetting stats", "Reset"), log.replace("--run-time", "x")):
        assert driver.locust_window(broken) is None
    text = (f'# TYPE {BATCH_SIZE_METRIC} histogram\n{BATCH_SIZE_METRIC}_count{{model="a"}} 3\n'
            f'{BATCH_SIZE_METRIC}_count{{model="b"}} 1\n{BATCH_SIZE_METRIC}_sum{{model="a"}} 9\n'
            f'# TYPE {FORWARD_METRIC} histogram\n{FORWARD_METRIC}_count 2\n{FORWARD_METRIC}_sum 0.5\n'
            '# TYPE other histogram\nother_count 7\n')
    assert driver.parse_metrics(text) == {BATCH_SIZE_METRIC: (4.0, 9.0), FORWARD_METRIC: (2.0, 0.5)}


CLI = driver.PlanCLI("compare", "x", lambda add: add("--duration", type=float), {"duration": (3.0, 60.0)},
                     lambda args: Plan("compare", [], {}, lambda run_dir, out: []))


@pytest.mark.parametrize(("argv", "expected"), [
    (["--quick", "--duration", "5"], (1, 5.0, 1.0)), (["--redis-url", "redis://h:6392/11"], (2, 60.0, 10.0)),
    (["--repeats", "0"], None), (["--warmup", "-1"], None), (["--duration", "0"], None),
    (["--redis-url", "redis://127.0.0.1:6379/14", "--redis-db-span", "3"], None)])
def test_plan_options_fill_in_and_bad_ones_stop_first(argv: list[str], expected: tuple | None) -> None:
    if expected is None:
        with pytest.raises(SystemExit) as exc:
            CLI.parse(argv)
        assert exc.value.code == 2
    else:
        args, _ = CLI.parse(argv)
        assert (args.repeats, args.duration, args.warmup) == expected


@pytest.fixture
def options(tmp_path: Path) -> Options:
    project = stand_in_project(tmp_path / "project")
    return Options(root=tmp_path / "run", redis_url="redis://127.0.0.1:6379/7", warmup_s=0.5,
                   project_root=project, flush_db=False, ready_timeout_s=60)


def test_a_failing_variant_is_recorded_and_the_plan_measures_the_rest(options: Options) -> None:
    crash = Variant("crash", {"BATCH_POLICY": "crash"})
    b2 = Variant("b2", {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "2"})
    args, _ = CLI.parse(["--warmup", "0.5", "--csv-dir", str(options.root), "--keep-db",
                         "--redis-url", "redis://127.0.0.1:6379/7"])
    loads = (Load(1, 1.0, roles=("sweep",)), Load(3, 1.0, roles=("equal",)))
    plan = Plan("compare", [Session(crash, loads[:1], 1, 0), Session(b2, loads, 1, 1)], {"extra": 1},
                lambda run_dir, out: [r.variant for r in load_runs(run_dir)], options.project_stack)
    assert driver.run_plan(plan, args, []) == 1
    recorded = json.loads((options.root / "plan.json").read_text())
    assert recorded["errors"] == ["crash repeat 1: stack crash: worker exited with 1; last log lines:"]
    assert recorded["extra"] == 1 and [v["name"] for v in recorded["variants"]] == ["crash", "b2"]
    assert (options.root / "stacks" / "b2-r1" / "warmup_stats.csv").exists()
    recs = load_runs(options.root)
    assert [(r.path.name, r.users, r.roles, r.mode, r.meta["redis_url"]) for r in recs] == [
        ("b2-u001-r1", 1, ("sweep",), "batch", "redis://127.0.0.1:6379/8"),
        ("b2-u003-r1", 3, ("equal",), "batch", "redis://127.0.0.1:6379/8")]
    for r in recs:
        assert r.stats.requests > 0 and r.stats.failures == 0
        assert (r.mean_batch_client, r.per_image_ms_client, r.mean_batch_worker) == (2.0, 15.0, 2.0)
        # CPU of every tree the stack started, and of locust, over locust's measured window
        assert {"worker", "web", "nginx", "locust"} <= set(r.cpu_by_tree) and (r.cpu_ms(("locust",)) or 0) > 0
        assert r.cores_busy() is not None and r.others_busy() is not None
    assert not psutil.Process(os.getpid()).children(recursive=True)
