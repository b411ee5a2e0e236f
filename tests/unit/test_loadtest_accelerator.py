"""loadtest.accelerator: the plan, what the runs say (ceilings, bounds, ratios, bends), its tables."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from loadtest import accelerator
from loadtest.accelerator import Device, bound, device_ceiling
from loadtest.results import Group, RunRecord, Spread
from tests.unit.test_loadtest_report import build_beside, table_row, write_runs
from tests.unit.test_loadtest_report import record as plain_record

DEVICE = Device(20.0, 2.0)
CORES = 2


def record(variant: str, users: int, rps: float, *, repeat: int = 1, workers: int = 1, batch: int = 1,
           cpu_s: dict[str, float] | None = None) -> RunRecord:
    """A run of ``variant`` that served ``rps`` for 10 s, every answer from a batch of ``batch``."""
    env = next(v for v in accelerator.variants(DEVICE, workers=(1, workers)) if v.name == variant).env
    return plain_record(variant, users, repeat, rps=rps, batches=[(batch, round(rps * 10), 0.0)],
                        env=dict(env), workers=workers, cpu_s=cpu_s or {})


def test_the_device_costs_a_plus_b_n_and_the_plan_has_each_mode_then_the_scale_out() -> None:
    assert (DEVICE.seconds(1), DEVICE.seconds(16)) == (pytest.approx(0.022), pytest.approx(0.052))
    assert Device.from_env({}) == DEVICE  # common.config's defaults
    chosen = accelerator.variants(DEVICE, workers=(1, 2, 4))
    assert [v.name for v in chosen] == ["individual", "batch-timeout", "batch-adaptive", "individual-2w",
                                        "individual-4w"]
    assert chosen[1].env == {"MODEL": "simulated", "SIMULATED_BATCH_MS": "20", "SIMULATED_ITEM_MS": "2",
                             "WEB_THREADS": "96", "USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "16",
                             "BATCH_TIMEOUT": "0.02", "BATCH_POLICY": "timeout", "WORKERS": "1"}
    assert chosen[4].env["WORKERS"] == "4" and chosen[4].env["USE_BATCH_PROCESSING"] == "false"
    with pytest.raises(ValueError):
        Device(0.0, 0.0)
    args, plan = accelerator.cli.parse(["--quick", "--redis-url", "redis://127.0.0.1:6396/1"])
    assert (args.users, args.workers, args.repeats, args.duration, args.warmup) == ([1, 4], [1, 2], 1, 2, 1)
    assert [s.variant.name for s in plan.sessions][-1] == "individual-2w"
    full, _ = accelerator.cli.parse(["--redis-url", "redis://127.0.0.1:6396/1", "--workers", "2"])
    assert (full.users, full.repeats, full.duration, full.warmup) == (list(accelerator.USERS), 2, 8.0, 4.0)
    with pytest.raises(SystemExit):  # a worker count below 1
        accelerator.cli.parse(["--workers", "0,2"])


def test_device_busy_ceilings_and_what_bounds_a_run() -> None:
    # 40 requests/s for 10 s, one image a pass: 400 passes x 22 ms = 8.8 s of one device's 10 s.
    assert accelerator.device_busy(record("individual", 8, 40.0)) == pytest.approx(0.88)
    assert accelerator.device_busy(record("individual-2w", 8, 40.0, workers=2)) == pytest.approx(0.44)
    assert accelerator.device_busy(record("batch-adaptive", 32, 160.0, batch=16)) == pytest.approx(0.52)
    device_bound = record("individual", 8, 44.0, cpu_s={"web": 2.0, "worker": 2.0})  # 9.1 ms/request
    assert device_ceiling(device_bound) == pytest.approx(1000 / 22)
    assert accelerator.cpu_ceiling(device_bound, CORES) == pytest.approx(2000 / (4000 / 440))
    assert bound(device_bound, CORES) == "device"
    # batches of 16: the device could do 307/s; 13.3 ms of CPU a request caps the cores at 150/s
    cpu_bound = record("batch-adaptive", 32, 140, batch=16, cpu_s={"web": 9.0, "worker": 9.0, "locust": 0.6})
    assert bound(cpu_bound, CORES) == "CPU"
    assert bound(record("individual", 1, 20.0, cpu_s={"web": 1.0, "worker": 1.0}), CORES) == "neither"
    # one worker process at 0.95 of a core while the machine has cores to spare: that process
    gil_bound = record("batch-adaptive", 32, 120, batch=16, cpu_s={"web": 5.0, "worker": 9.5, "locust": 0.5})
    assert gil_bound.busiest() == ("worker", pytest.approx(0.95))
    assert bound(gil_bound, CORES) == "worker process"
    assert device_ceiling(record("individual-4w", 8, 100.0, workers=4)) == pytest.approx(4000 / 22)
    assert device_ceiling(record("batch-timeout", 8, 100.0, batch=16)) == pytest.approx(16000 / 52)


def test_paired_ratios_the_plans_order_and_where_a_curve_bends() -> None:
    records = [record("batch-timeout", 32, 150.0, repeat=1), record("individual", 32, 50.0, repeat=1),
               record("batch-timeout", 32, 120.0, repeat=2), record("individual", 32, 30.0, repeat=2),
               record("batch-timeout", 32, 999.0, repeat=3)]  # no individual run in repeat 3: left out
    assert accelerator.paired_ratio(records, "batch-timeout", "individual", 32) == Spread(3.5, 3.0, 4.0, 2)
    assert accelerator.paired_ratio(records, "batch-timeout", "individual", 64) is None
    records = [record("individual-2w", 1, 5.0, workers=2), record("batch-timeout", 1, 10.0)] + [
        record("individual", u, rps, cpu_s={"web": 2.0, "worker": 2.0}) for u, rps in
        ((1, 20.0), (2, 39.0), (4, 44.0), (8, 45.0))]
    summary = Group.by_variant(records, ["individual", "missing", "batch-timeout"])
    assert list(summary) == ["individual", "batch-timeout", "individual-2w"]  # unplanned last, unmeasured out
    assert accelerator.verdict(summary["individual"][8], CORES) == "device"
    assert accelerator.bend(summary["individual"]) == 2  # 39 >= 0.85 x 45
    assert accelerator.bend({}) is None


_CPU = {"web": 6.0, "worker": 6.0, "locust": 1.0}
#: variant -> requests/s at 1 user, at 32 users in repeats 1 and 2, the record's other arguments
SWEEP: dict[str, tuple[float, tuple[float, float], dict[str, Any]]] = {
    "individual": (20.0, (44.0, 44.0), {"cpu_s": _CPU}),
    "batch-timeout": (10.0, (151.0, 152.0), {"batch": 16, "cpu_s": {"web": 6.0, "worker": 9.5}}),
    "batch-adaptive": (20.0, (140.0, 140.0), {"batch": 16, "cpu_s": {"web": 10.0, "worker": 10.0}}),
    "individual-2w": (20.0, (88.0, 88.0), {"workers": 2, "cpu_s": _CPU}),
    "individual-4w": (20.0, (140.0, 140.0), {"workers": 4, "cpu_s": {"web": 9.0, "worker": 5.0,
                                                                     "worker-1": 5.0}})}


def sweep() -> list[RunRecord]:
    return [record(name, users, low if users == 1 else high[repeat - 1], repeat=repeat, **kwargs)
            for repeat in (1, 2) for users in (1, 32) for name, (low, high, kwargs) in SWEEP.items()]


def test_the_report_states_targets_load_and_bends_from_the_files(tmp_path: Path) -> None:
    names = list(SWEEP)
    run_dir = write_runs(tmp_path / "run", sweep(), command="python -m loadtest.accelerator", warmup_s=4,
                         device={"batch_ms": 20, "item_ms": 2}, batch_size=16, batch_timeout=0.02,
                         notes=["Repeat 2 is a second run's."], variants=[{"name": n} for n in names])
    lines, section = build_beside(accelerator.build_report, run_dir, "accelerator")
    out = tmp_path / "docs" / "benchmarks.md"
    assert all(h in section for h in ("### Targets", "### Throughput, latency and bound against load",
                                      "### Where each curve bends, and why", "### Machine"))
    assert "a + b·n = 20 + 2·n ms" in section and "BATCH_SIZE=16" in section
    assert "\nRepeat 2 is a second run's.\n" in section
    targets = lines[0].splitlines()[2:]  # read at 32 users, paired by repeat: 151 / 44 and 152 / 44
    assert lines[0] in section and lines[1] in section and targets[:3] == [
        "| batch-timeout ÷ individual | 32 | ×3.44 (3.43–3.45) | ≥ ×3 | yes |",
        "| batch-adaptive ÷ individual | 32 | ×3.18 | ≥ ×3 | yes |",
        "| individual-2w ÷ individual | 32 | ×2.00 | ≥ ×1.8 until the CPU ceiling | yes |"]
    # 140 / 44 = 3.18 < 3.6, and 140 requests/s at 20 ms each on 2 cores is the CPU ceiling
    assert targets[3].endswith("| ×3.18 | ≥ ×3.6 until the CPU ceiling | no (at the CPU ceiling) |")
    assert "| Users | individual: requests/s | batch-timeout: requests/s |" in section
    assert "| 1 | 20.0 | 10.0 | 20.0 | 20.0 | 20.0 | 100 / 200 |" in section
    assert "| device | worker process | CPU | device | CPU |\n" in section  # what bounds each at 32 users
    # 13 CPU seconds for 440 requests: 2 cores / 29.5 ms = 68/s; the device's 45/s is lower
    bends = {name: table_row(section, name) for name in names}
    assert bends["individual"][1:7] == ["32", "32", "45", "68", "device", "97"]
    assert bends["individual"][10] == "13.6 / 13.6 / — / 2.3"  # web / workers / Redis / locust, ms
    assert [bends["batch-timeout"][i] for i in (3, 5, 8)] == ["308", "worker process", "worker 0.95"]
    assert [bends["individual-4w"][i] for i in (5, 7)] == ["CPU", "1.90"]
    assets = out.parent / "benchmarks"
    for what in ("throughput", "p95"):
        assert (assets / f"accelerator_{what}_vs_users.png").read_bytes()[:4] == b"\x89PNG"
    with open(assets / "accelerator_runs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 20 and {row["workers"] for row in rows} == {"1", "2", "4"}
    assert {row["device_ceiling_per_s"] for row in rows if row["variant"] == "individual-4w"} == {"181.818"}
