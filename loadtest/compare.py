"""The guide's test plan, individual against batch mode, each variant started fresh (``make compare``).

Per variant: the guide's own run, the same users for every variant, and a sweep of users; the
model-only ceiling runs first, on a quiet machine.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import config

from .driver import Load, Plan, PlanCLI, alternate, int_list, merge_loads
from .report import BENCHMARK_SIZES, build_report, run_benchmark
from .stack import INDIVIDUAL, Variant, batch_variant

#: In the order they alternate: the baseline, then batch mode with each BATCH_POLICY.
VARIANT_NAMES = ("individual", *(f"batch-{policy}" for policy in config.BATCH_POLICIES))
#: The guide's two locust commands: users and spawn rate per mode, --run-time 60s.
SEED_USERS, SEED_SPAWN_RATE = {"individual": 10, "batch": 20}, {"individual": 2.0, "batch": 5.0}


@dataclass(frozen=True)
class ComparePlan:
    """User counts and durations of the comparison (written to plan.json as they are)."""
    seed_users: dict[str, int]  #: users per mode for the guide's own runs
    equal_users: int
    users_sweep: tuple[int, ...]
    duration_s: float  #: of the guide's runs and the equal-users runs
    sweep_duration_s: float
    seed_spawn_rate: dict[str, float] | None  #: None: start all users within a second

    def loads(self, mode: str) -> tuple[Load, ...]:
        roles = merge_loads([(self.seed_users[mode], "seed"), (self.equal_users, "equal"),
                             *((users, "sweep") for users in self.users_sweep)])
        rate = (self.seed_spawn_rate or {}).get(mode)
        return tuple(Load(users, self.duration_s if {"seed", "equal"} & set(tags) else self.sweep_duration_s,
                          rate if "seed" in tags else None, tags) for users, tags in roles.items())


def variants(batch_size: int, batch_timeout: float, names: Sequence[str] = VARIANT_NAMES) -> list[Variant]:
    known = {v.name: v for v in [INDIVIDUAL, *(batch_variant(f"batch-{p}", batch_size, batch_timeout, p)
                                               for p in config.BATCH_POLICIES)]}
    if unknown := [n for n in names if n not in known]:
        raise ValueError(f"unknown variants {unknown}: use some of {list(known)}")
    if "individual" not in names:
        raise ValueError("--variants must include individual, the baseline")
    return [known[n] for n in names]


def _arguments(add: Callable[..., Any]) -> None:
    add("--duration", type=float, help="measured seconds of the guide's runs (60)")
    add("--sweep-duration", type=float, help="measured seconds per sweep point (20)")
    add("--users-sweep", type=int_list, help="users of the sweep (1,2,4,8,16,32)")
    add("--variants", default=",".join(VARIANT_NAMES), help="comma-separated subset of %(default)s")
    add("--batch-size", type=int, default=config.value("BATCH_SIZE"), help="BATCH_SIZE (%(default)s)")
    add("--batch-timeout", type=float, default=config.value("BATCH_TIMEOUT"),
        help="BATCH_TIMEOUT s (%(default)s)")
    add("--no-benchmark", action="store_true", help="skip the model-only ceiling")


def _plan(args: argparse.Namespace) -> Plan:
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    chosen = variants(args.batch_size, args.batch_timeout, names)
    quick = args.quick
    plan = ComparePlan({"individual": 4, "batch": 4} if quick else dict(SEED_USERS), 4 if quick else 20,
                       tuple(args.users_sweep), args.duration, args.sweep_duration,
                       None if quick else dict(SEED_SPAWN_RATE))
    sizes = (1, 2, 4) if quick else BENCHMARK_SIZES
    record = {**asdict(plan), "baseline": INDIVIDUAL.name,
              "benchmark_sizes": None if args.no_benchmark else sizes,
              "seed_batch": "batch-timeout" if "batch-timeout" in names else chosen[-1].name}

    def benchmark(run_dir: Path) -> list[str]:
        extra = ["--repeats", "3", "--warmup", "1"] if quick else []
        if args.no_benchmark or run_benchmark(run_dir / "benchmark.json", sizes=sizes, extra_args=extra,
                                              log_path=run_dir / "benchmark.log"):
            return []
        return ["the model-only benchmark gave no results; see benchmark.log"]

    sessions = alternate(chosen, lambda v: plan.loads(v.mode), args.repeats)
    return Plan("compare", sessions, record, build_report, before=benchmark)


cli = PlanCLI("compare", __doc__ or "", _arguments, {"duration": (3.0, 60.0), "sweep_duration": (3.0, 20.0),
                                                    "users_sweep": ([1, 4], [1, 2, 4, 8, 16, 32])}, _plan)
main = cli.main

if __name__ == "__main__":
    raise SystemExit(main())
