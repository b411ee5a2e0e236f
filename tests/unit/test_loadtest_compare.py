"""loadtest.compare: the test plan (users, roles, durations), its variants and its options."""

from __future__ import annotations

import pytest

from loadtest.compare import ComparePlan, cli, variants

PLAN = ComparePlan({"individual": 10, "batch": 20}, 20, (1, 2, 4, 8, 16, 32), 60.0, 20.0,
                   {"individual": 2.0, "batch": 5.0})


def test_loads_merge_the_guide_the_equal_load_and_the_sweep() -> None:
    assert [(ld.users, ld.roles, ld.duration_s, ld.rate) for ld in PLAN.loads("individual")] == [
        (1, ("sweep",), 20.0, 1.0), (2, ("sweep",), 20.0, 2.0), (4, ("sweep",), 20.0, 4.0),
        (8, ("sweep",), 20.0, 8.0), (10, ("seed",), 60.0, 2.0), (16, ("sweep",), 20.0, 16.0),
        (20, ("equal",), 60.0, 20.0), (32, ("sweep",), 20.0, 32.0)]
    batch = {ld.users: ld for ld in PLAN.loads("batch")}
    assert (batch[20].roles, batch[20].rate, batch[20].duration_s) == (("seed", "equal"), 5.0, 60.0)
    assert 10 not in batch and batch[20].run_time_s == 64  # --reset-stats drops the 4 s ramp-up


def test_variants_are_the_baseline_and_each_policy_and_options_fill_in() -> None:
    assert [(v.name, dict(v.env)) for v in variants(4, 2.0)] == [
        ("individual", {"USE_BATCH_PROCESSING": "false"}),
        *((f"batch-{p}", {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "4", "BATCH_TIMEOUT": "2",
                          "BATCH_POLICY": p}) for p in ("timeout", "adaptive"))]
    args, plan = cli.parse(["--quick", "--users-sweep", "2"])
    assert (args.repeats, args.duration, args.users_sweep) == (1, 3.0, [2])
    assert [s.variant.name for s in plan.sessions] == ["individual", "batch-timeout", "batch-adaptive"]
    args, plan = cli.parse([])
    assert (args.repeats, args.duration, args.sweep_duration, plan.record["seed_users"]) == (
        2, 60.0, 20.0, {"individual": 10, "batch": 20})


@pytest.mark.parametrize("argv", [["--variants", "batch-timeout"], ["--variants", "individual,batch-fast"],
                                  ["--users-sweep", "0,2"], ["--sweep-duration", "0"]])
def test_bad_options_stop_before_anything_runs(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.parse(argv)
    assert exc.value.code == 2
