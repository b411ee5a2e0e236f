"""loadtest.accelerator: the variant plan, what the runs say (ceilings, ratios, bends) and its tables.

Runs are made up in memory or written as the files a real run leaves (run.json, locust's
Aggregated row, the batch tally); nothing here starts a stack.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from loadtest import accelerator
from loadtest.accelerator import Device, Point
from loadtest.results import BatchRow, LocustStats, RunRecord, Spread, load_runs

DEVICE = Device(20.0, 2.0)
CORES = 2


def env(name: str, workers: int = 1) -> dict[str, str]:
    """The settings ``accelerator.variants`` gives ``name`` (``<mode>-<n>w``: that mode's scale-out)."""
    scale = name.rsplit("-", 1)[0] if workers > 1 else "individual"
    return dict(next(v for v in accelerator.variants(DEVICE, workers=(1, workers), scale=scale)
                     if v.name == name).env)


def record(variant: str, users: int, rps: float, *, repeat: int = 1, workers: int = 1, batch: int = 1,
           cpu_s: dict[str, float] | None = None, window_s: float = 10.0, p50: float = 100.0,
           p95: float = 200.0, path: Path = Path("run")) -> RunRecord:
    """A run of ``variant`` that served ``rps`` for ``window_s`` s, every answer from a batch of ``batch``."""
    requests = round(rps * window_s)
    meta: dict[str, Any] = {
        "variant": variant, "mode": "batch" if variant.startswith("batch") else "individual",
        "users": users, "repeat": repeat, "workers": workers,
        "env": env(variant, workers),
        "cpu_window_s": window_s, "cpu_s": cpu_s or {}}
    stats = LocustStats(requests, 0, rps, 0.0, p50, p50, p95, p95, p95)
    return RunRecord(path, meta, stats, [BatchRow(batch, requests, 0.0)])


def spread(median: float, low: float | None = None, high: float | None = None, n: int = 2) -> Spread:
    return Spread(median, median if low is None else low, median if high is None else high, n)


# -- the plan ------------------------------------------------------------------------------------

def test_device_costs_a_plus_b_n() -> None:
    assert DEVICE.seconds(1) == pytest.approx(0.022)
    assert DEVICE.seconds(16) == pytest.approx(0.052)
    assert DEVICE.images_per_s(1) == pytest.approx(1000 / 22)
    assert DEVICE.images_per_s(16) == pytest.approx(16000 / 52)
    assert Device.from_env({}) == DEVICE  # common.config's defaults
    assert Device.from_env({"SIMULATED_BATCH_MS": "5", "SIMULATED_ITEM_MS": "0.5"}) == Device(5.0, 0.5)
    with pytest.raises(ValueError):
        Device(0.0, 0.0)
    with pytest.raises(ValueError):
        Device(-1.0, 2.0)


def test_variants_are_the_modes_on_one_worker_then_the_scale_out() -> None:
    chosen = accelerator.variants(DEVICE, batch_size=16, batch_timeout=0.02, workers=(4, 1, 2, 2))
    assert [v.name for v in chosen] == ["individual", "batch-timeout", "batch-adaptive", "individual-2w",
                                        "individual-4w"]
    assert [v.workers for v in chosen] == [1, 1, 1, 2, 4]
    for v in chosen:  # the same simulated device and web app everywhere
        assert (v.env["MODEL"], v.env["SIMULATED_BATCH_MS"], v.env["SIMULATED_ITEM_MS"]) == (
            "simulated", "20", "2")
        assert v.env["WEB_THREADS"] == str(accelerator.WEB_THREADS)
    batch = {v.name: dict(v.env) for v in chosen if v.mode == "batch"}
    assert batch["batch-timeout"] | {"BATCH_POLICY": "adaptive"} == batch["batch-adaptive"]
    assert (batch["batch-timeout"]["BATCH_SIZE"], batch["batch-timeout"]["BATCH_TIMEOUT"]) == ("16", "0.02")
    assert dict(chosen[3].env) | {"WORKERS": "1"} == chosen[0].env  # only the worker count differs


def test_the_scale_out_may_be_a_batch_mode() -> None:
    chosen = accelerator.variants(DEVICE, workers=(1, 2), scale="batch-adaptive")
    assert chosen[-1].name == "batch-adaptive-2w"
    assert dict(chosen[-1].env) | {"WORKERS": "1"} == chosen[2].env


@pytest.mark.parametrize("kwargs", [{"scale": "turbo"}, {"workers": (0, 2)}, {"batch_size": 0},
                                    {"batch_timeout": 0.0}])
def test_bad_plans_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        accelerator.variants(DEVICE, **kwargs)


def test_sessions_alternate_variants_and_measure_users_fewest_first() -> None:
    chosen = accelerator.variants(DEVICE, workers=(1, 2))
    sessions = accelerator.build_sessions(chosen, [8, 1, 64, 8], 5.0, repeats=2)
    names = ["individual", "batch-timeout", "batch-adaptive", "individual-2w"]
    assert [(s.variant.name, s.repeat) for s in sessions] == [(n, r) for r in (1, 2) for n in names]
    assert [s.db_offset for s in sessions] == [0, 1, 2, 3] * 2
    assert [(load.users, load.duration_s) for load in sessions[0].loads] == [(1, 5.0), (8, 5.0), (64, 5.0)]


def test_quick_fills_in_a_tiny_plan() -> None:
    args = accelerator.parse_args(["--quick", "--redis-url", "redis://127.0.0.1:6396/1"])
    assert (args.users, args.workers, args.repeats, args.duration, args.warmup) == (
        [1, 4], [1, 2], 1, 2.0, 1.0)
    assert [v.name for v in args.chosen] == ["individual", "batch-timeout", "batch-adaptive", "individual-2w"]
    full = accelerator.parse_args(["--redis-url", "redis://127.0.0.1:6396/1", "--workers", "2"])
    assert (full.users, full.repeats, full.duration, full.warmup) == (
        list(accelerator.USERS), accelerator.REPEATS, accelerator.DURATION_S, accelerator.WARMUP_S)


# -- measuring -----------------------------------------------------------------------------------

def test_device_busy_is_the_answers_batches_over_the_window_and_workers() -> None:
    # 40 requests/s for 10 s, one image a pass: 400 passes x 22 ms = 8.8 s of one device's 10 s.
    assert accelerator.device_busy(record("individual", 8, 40.0)) == pytest.approx(0.88)
    assert accelerator.device_busy(record("individual-2w", 8, 40.0, workers=2)) == pytest.approx(0.44)
    # 160 requests/s in batches of 16: 100 passes x 52 ms = 5.2 s.
    assert accelerator.device_busy(record("batch-adaptive", 32, 160.0, batch=16)) == pytest.approx(0.52)


def test_cpu_per_request_by_group_and_cores_busy() -> None:
    run = record("individual-2w", 8, 50.0, workers=2,
                 cpu_s={"web": 5.0, "worker": 4.0, "worker-1": 4.0, "redis": 1.0, "locust": 1.0})
    assert run.cpu_ms() == pytest.approx(15000 / 500)
    assert run.cpu_ms(("worker",)) == pytest.approx(8000 / 500)
    assert run.cpu_ms(("web",)) == pytest.approx(10.0)
    assert run.cores_busy() == pytest.approx(1.5)
    assert accelerator.busiest(run) == ("web", pytest.approx(0.5))
    assert record("individual", 1, 10.0).cpu_ms() is None  # no CPU samples: not measured


def test_ceilings_and_what_bounds_a_run() -> None:
    device_bound = record("individual", 8, 44.0, cpu_s={"web": 2.0, "worker": 2.0})  # 9.1 ms/request
    assert accelerator.device_ceiling(device_bound) == pytest.approx(1000 / 22)
    assert accelerator.cpu_ceiling(device_bound, CORES) == pytest.approx(2000 / (4000 / 440))
    assert accelerator.bound(device_bound, CORES) == "device"
    # batches of 16: the device could do 307/s; 13.3 ms of CPU a request caps the cores at 150/s
    cpu_bound = record("batch-adaptive", 32, 140.0, batch=16,
                       cpu_s={"web": 9.0, "worker": 9.0, "locust": 0.6})
    assert accelerator.device_ceiling(cpu_bound) == pytest.approx(16000 / 52)
    assert accelerator.bound(cpu_bound, CORES) == "CPU"
    few_users = record("individual", 1, 20.0, cpu_s={"web": 1.0, "worker": 1.0})
    assert accelerator.bound(few_users, CORES) == "neither"
    # one worker process at 0.95 of a core while the machine has cores to spare: that process
    gil_bound = record("batch-adaptive", 32, 120.0, batch=16,
                       cpu_s={"web": 5.0, "worker": 9.5, "locust": 0.5})
    assert accelerator.busiest(gil_bound) == ("worker", pytest.approx(0.95))
    assert accelerator.bound(gil_bound, CORES) == "worker process"
    assert accelerator.busiest(record("individual", 1, 20.0)) is None
    four = record("individual-4w", 8, 100.0, workers=4)
    assert accelerator.device_ceiling(four) == pytest.approx(4000 / 22)


def test_paired_ratio_pairs_repeats_that_ran_back_to_back() -> None:
    records = [record("batch-timeout", 32, 150.0, repeat=1), record("individual", 32, 50.0, repeat=1),
               record("batch-timeout", 32, 120.0, repeat=2), record("individual", 32, 30.0, repeat=2),
               record("batch-timeout", 32, 999.0, repeat=3)]  # no individual run in repeat 3: left out
    ratio = accelerator.paired_ratio(records, "batch-timeout", "individual", 32)
    assert ratio == Spread(3.5, 3.0, 4.0, 2)
    assert accelerator.paired_ratio(records, "batch-timeout", "individual", 64) is None


def _point(users: int, rps: float, workers: int = 1, bound: str = "device") -> Point:
    return Point("v", users, workers, 1, spread(rps), spread(10.0 * users), spread(20.0 * users), spread(0.0),
                 spread(1.0), spread(0.9), spread(1.2),
                 {"web": spread(3.0), "workers": spread(5.0), "redis": None, "locust": spread(1.0),
                  "all": spread(9.0)}, 45.5, spread(222.0), bound, "worker 0.50")


def test_a_curve_bends_where_it_reaches_near_its_top() -> None:
    points = {1: _point(1, 20.0), 2: _point(2, 39.0), 4: _point(4, 44.0), 8: _point(8, 45.0)}
    assert accelerator.bend(points) == 2  # 39 >= 0.85 x 45
    assert accelerator.bend({**points, 2: _point(2, 38.0)}) == 4
    assert accelerator.bend({1: _point(1, 10.0)}) == 1
    assert accelerator.bend({}) is None


def test_targets_are_read_at_32_users_or_the_most_measured() -> None:
    assert accelerator.ratio_users_of([1, 2, 32, 64]) == 32
    assert accelerator.ratio_users_of([1, 4]) == 4
    with pytest.raises(ValueError):
        accelerator.ratio_users_of([])


def test_summarize_keeps_the_plans_order() -> None:
    records = [record("individual-2w", 1, 5.0, workers=2), record("batch-timeout", 1, 10.0),
               record("individual", 1, 20.0)]
    assert list(accelerator.summarize(records, CORES, ["individual", "missing", "batch-timeout"])) == [
        "individual", "batch-timeout", "individual-2w"]  # unplanned ones last, unmeasured ones left out


def test_summarize_groups_runs_by_variant_and_users() -> None:
    records = [record("individual", 8, rps, repeat=r, cpu_s={"web": 2.0, "worker": 2.0})
               for r, rps in ((1, 44.0), (2, 42.0))] + [record("individual", 1, 20.0)]
    summary = accelerator.summarize(records, CORES)
    point = summary["individual"][8]
    assert (point.users, point.workers, point.max_batch, point.bound) == (8, 1, 1, "device")
    assert point.rps == Spread(43.0, 42.0, 44.0, 2)
    assert point.cpu_ms["workers"] is not None and point.cpu_ms["redis"] is None
    assert list(summary["individual"]) == [1, 8]


# -- the tables ----------------------------------------------------------------------------------

def _sweep() -> list[RunRecord]:
    """Two repeats: individual flat at 44, batch at 150 (CPU-bound), 2 workers 88, 4 workers 140."""
    cpu = {"web": 6.0, "worker": 6.0, "locust": 1.0}
    out = []
    for repeat in (1, 2):
        for users in (1, 32):
            low = users == 1
            out += [record("individual", users, 20.0 if low else 44.0, repeat=repeat, cpu_s=cpu),
                    record("batch-timeout", users, 10.0 if low else 150.0 + repeat, repeat=repeat, batch=16,
                           cpu_s={"web": 6.0, "worker": 9.5}),
                    record("batch-adaptive", users, 20.0 if low else 140.0, repeat=repeat, batch=16,
                           cpu_s={"web": 10.0, "worker": 10.0}),
                    record("individual-2w", users, 20.0 if low else 88.0, repeat=repeat, workers=2,
                           cpu_s=cpu),
                    record("individual-4w", users, 20.0 if low else 140.0, repeat=repeat, workers=4,
                           cpu_s={"web": 9.0, "worker": 5.0, "worker-1": 5.0})]
    return out


def test_targets_table_states_each_ratio_against_its_target() -> None:
    records = _sweep()
    text = accelerator.render_targets(records, accelerator.summarize(records, CORES))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines()[2:]}
    assert set(rows) == {"batch-timeout ÷ individual", "batch-adaptive ÷ individual",
                         "individual-2w ÷ individual (2 workers ÷ 1)",
                         "individual-4w ÷ individual (4 workers ÷ 1)"}
    # paired by repeat: 151 / 44 and 152 / 44
    assert rows["batch-timeout ÷ individual"].endswith(
        "| 32 | ×3.44 (3.43–3.45) (151.5 ÷ 44.0 requests/s) | ≥ ×3 | yes |")
    assert rows["batch-adaptive ÷ individual"].endswith(
        "| 32 | ×3.18 (140.0 ÷ 44.0 requests/s) | ≥ ×3 | yes |")
    assert "×2.00 (88.0 ÷ 44.0 requests/s) | ≥ ×1.8 until the CPU ceiling | yes |" in rows[
        "individual-2w ÷ individual (2 workers ÷ 1)"]
    # 140 / 44 = 3.18 < 3.6, and 140 requests/s at 20 ms each on 2 cores is the CPU ceiling
    assert rows["individual-4w ÷ individual (4 workers ÷ 1)"].endswith(
        "| ≥ ×3.6 until the CPU ceiling | no (at the CPU ceiling) |")


def test_a_batch_mode_on_two_workers_is_compared_with_its_one_worker_not_with_individual() -> None:
    records = [record("individual", 32, 44.0), record("batch-adaptive", 32, 120.0, batch=16),
               record("batch-adaptive-2w", 32, 132.0, batch=16, workers=2)]
    text = accelerator.render_targets(records, accelerator.summarize(records, CORES))
    labels = [line.split(" | ")[0].lstrip("| ") for line in text.splitlines()[2:]]
    assert labels == ["batch-adaptive ÷ individual", "batch-adaptive-2w ÷ batch-adaptive (2 workers ÷ 1)"]
    assert "×1.10 (132.0 ÷ 120.0 requests/s)" in text


def test_users_table_has_a_row_per_user_count() -> None:
    records = _sweep()
    text = accelerator.render_users_table(accelerator.summarize(records, CORES))
    lines = text.splitlines()
    assert lines[0].startswith("| Users | individual: requests/s | batch-timeout: requests/s |")
    assert lines[0].endswith("| individual-4w: p50 / p95, ms |")
    assert lines[2].startswith("| 1 | 20.0 | 10.0 | 20.0 | 20.0 | 20.0 | 100 / 200 |")
    assert lines[3].startswith("| 32 | 44.0 | 151.5 (151.0–152.0) | 140.0 |")
    assert len(lines) == 4


def test_scale_out_table_gives_each_worker_count_and_its_ratio() -> None:
    records = _sweep()
    text = accelerator.render_scale_out(records, accelerator.summarize(records, CORES))
    lines = text.splitlines()
    assert lines[0] == ("| Users | 1 worker: requests/s (individual) | 2 workers: requests/s | 2 ÷ 1 | "
                        "2 workers: bound by | 4 workers: requests/s | 4 ÷ 1 | 4 workers: bound by |")
    assert lines[3] == "| 32 | 44.0 | 88.0 | ×2.00 | device | 140.0 | ×3.18 | CPU |"


def test_bends_table_names_the_bound_and_its_evidence() -> None:
    records = _sweep()
    text = accelerator.render_bends(accelerator.summarize(records, CORES))
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text.splitlines()[2:]}
    individual, batch, four = rows["individual"], rows["batch-timeout"], rows["individual-4w"]
    # 13 CPU seconds for 440 requests: 29.5 ms each, 2 cores / 29.5 ms = 68/s; the device's 45/s is lower
    assert individual[1:8] == ["32", "44.0", "32", "45", "68", "device", "97"]
    assert individual[11] == "13.6 / 13.6 / — / 2.3"  # web / workers / Redis / locust, ms per request
    # 16 / 52 ms: the device could do 308/s; the worker process at 0.95 of a core is the limit
    assert (batch[4], batch[6], batch[9]) == ("308", "worker process", "worker 0.95")
    assert (four[6], four[8], four[9]) == ("CPU", "1.90", "web 0.90")


def _write_run(root: Path, r: RunRecord) -> None:
    folder = root / "runs" / f"{r.variant}-u{r.users:03d}-r{r.repeat}"
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps(r.meta))
    with open(folder / "locust_stats.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Type", "Name", "Request Count", "Failure Count", "Requests/s", "Failures/s",
                         "Average Response Time", "50%", "95%", "99%", "Max Response Time"])
        s = r.stats
        writer.writerow(["", "Aggregated", s.requests, s.failures, s.requests_per_s, s.failures_per_s,
                         s.mean_ms, s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms])
    with open(folder / "locust_batches.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["batch_size", "requests", "inference_ms_sum"])
        for b in r.batches:
            writer.writerow([b.batch_size, b.requests, b.inference_ms_sum])


def test_build_report_writes_the_section_csv_and_plots_from_the_files(tmp_path: Path) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "docs" / "benchmarks.md"
    for r in _sweep():
        _write_run(run_dir, r)
    (run_dir / "plan.json").write_text(json.dumps({
        "command": "python -m loadtest.accelerator", "started_at": "t0", "finished_at": "t1", "warmup_s": 4,
        "machine": {"logical_cpus": 2, "cpu": "test CPU"}, "errors": [],
        "device": {"batch_ms": 20, "item_ms": 2},
        "batch_size": 16, "batch_timeout": 0.02, "scale_variant": "individual",
        "notes": ["Repeat 2 is a second run's."],
        "variants": [{"name": n} for n in ("individual", "batch-timeout", "batch-adaptive", "individual-2w",
                                           "individual-4w")]}))
    out.parent.mkdir()
    out.write_text("# Benchmarks\n\n<!-- BEGIN peers -->\nkept\n<!-- END peers -->\n")
    lines = accelerator.build_report(run_dir, out)
    text = out.read_text()
    assert "<!-- BEGIN peers -->\nkept\n<!-- END peers -->" in text
    section = text.split("<!-- BEGIN accelerator -->")[1].split("<!-- END accelerator -->")[0]
    for heading in ("### Targets", "### Throughput and latency against load", "### Scale-out",
                    "### Where each curve bends, and why", "### Machine"):
        assert heading in section
    assert "a + b·n = 20 + 2·n ms" in section and "BATCH_SIZE=16" in section
    assert "\nRepeat 2 is a second run's.\n" in section
    assert "- `individual` bends at 32 users; at 32 users the device is the limit" in section
    assert "- `batch-timeout` bends at 32 users; at 32 users one process is the limit: worker 0.95" in section
    assert "- `individual-4w` bends at 32 users; at 32 users the cores are the limit" in section
    assets = out.parent / "benchmarks"
    assert (assets / "accelerator_throughput_vs_users.png").stat().st_size > 0
    assert (assets / "accelerator_p95_vs_users.png").stat().st_size > 0
    with open(assets / "accelerator_runs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(load_runs(run_dir)) == 20
    assert {row["workers"] for row in rows} == {"1", "2", "4"}
    assert any(line.startswith("`individual` bends at 32 users") for line in lines)
