"""loadtest.compare: the test plan (users, roles, durations), the ABAB order and the options."""

from __future__ import annotations

import pytest

from loadtest.compare import ComparePlan, build_sessions, parse_args, variants


def plan(**overrides: object) -> ComparePlan:
    values: dict[str, object] = dict(
        seed_users={"individual": 10, "batch": 20},
        equal_users=20,
        users_sweep=(1, 2, 4, 8, 16, 32),
        duration_s=60.0,
        sweep_duration_s=20.0,
        repeats=2,
        seed_spawn_rate={"individual": 2.0, "batch": 5.0},
    )
    values.update(overrides)
    return ComparePlan(**values)  # type: ignore[arg-type]


def test_loads_merge_the_guide_the_equal_load_and_the_sweep() -> None:
    individual = plan().loads("individual")
    assert [(ld.users, ld.roles, ld.duration_s, ld.rate) for ld in individual] == [
        (1, ("sweep",), 20.0, 1.0),
        (2, ("sweep",), 20.0, 2.0),
        (4, ("sweep",), 20.0, 4.0),
        (8, ("sweep",), 20.0, 8.0),
        (10, ("seed",), 60.0, 2.0),
        (16, ("sweep",), 20.0, 16.0),
        (20, ("equal",), 60.0, 20.0),
        (32, ("sweep",), 20.0, 32.0),
    ]
    batch = {ld.users: ld for ld in plan().loads("batch")}
    assert batch[20].roles == ("seed", "equal") and batch[20].rate == 5.0 and batch[20].duration_s == 60.0
    assert 10 not in batch
    # --reset-stats drops the ramp-up, so run time = ramp + measured duration
    assert batch[20].run_time_s == 64


def test_sessions_alternate_variants_within_each_repeat() -> None:
    chosen = variants(4, 2.0)
    sessions = build_sessions(chosen, plan(repeats=2))
    assert [(s.variant.name, s.repeat, s.db_offset) for s in sessions] == [
        ("individual", 1, 0),
        ("batch-timeout", 1, 1),
        ("batch-adaptive", 1, 2),
        ("individual", 2, 0),
        ("batch-timeout", 2, 1),
        ("batch-adaptive", 2, 2),
    ]
    assert sessions[1].variant.env == {
        "USE_BATCH_PROCESSING": "true",
        "BATCH_SIZE": "4",
        "BATCH_TIMEOUT": "2",
        "BATCH_POLICY": "timeout",
    }
    assert sessions[2].variant.env["BATCH_POLICY"] == "adaptive"
    assert sessions[0].variant.env == {"USE_BATCH_PROCESSING": "false"}


def test_unknown_variant() -> None:
    with pytest.raises(ValueError, match="unknown variants"):
        variants(4, 2.0, ["individual", "batch-fast"])


def test_quick_fills_only_what_is_not_given() -> None:
    args = parse_args(["--quick", "--users-sweep", "2"])
    assert (args.repeats, args.duration, args.users_sweep, args.seed_users) == (1, 3.0, [2], [4, 4])
    full = parse_args([])
    assert (full.repeats, full.duration, full.sweep_duration, full.equal_users) == (2, 60.0, 20.0, 20)
    assert full.users_sweep == [1, 2, 4, 8, 16, 32] and full.seed_users == [10, 20]
    assert full.benchmark_sizes == [1, 2, 4, 8, 16]


@pytest.mark.parametrize(
    "argv",
    [
        ["--seed-users", "10"],
        ["--repeats", "0"],
        ["--duration", "0"],
        ["--users-sweep", "0,2"],
        ["--variants", "batch-timeout"],
        ["--redis-url", "redis://127.0.0.1:6379/14", "--redis-db-span", "3"],
    ],
)
def test_bad_options_stop_before_anything_runs(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
