"""Run the batch-processing guide's test plan end to end and write the report (``make compare``).

The model alone first (the ceiling); then, per repeat, each variant in turn (individual, batch
with each BATCH_POLICY) on a fresh stack: the guide's user counts (10 individual, 20 batch), one
user count for every variant and a sweep; then the load-comparison section of
``docs/benchmarks.md`` and the throughput ratios with both numbers. Speed is never asserted.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from common import config

from . import defaults
from .driver import Load, Plan, Session, alternate, int_list, merge_loads, parse_plan_args, run_plan
from .report import build_report, run_benchmark
from .stack import INDIVIDUAL, Variant, batch_variant

__all__ = ["ComparePlan", "build_sessions", "main", "parse_args", "variants"]

#: Variant names, in the order they alternate: the baseline, then batch mode with each BATCH_POLICY.
VARIANT_NAMES = ("individual", *(f"batch-{policy}" for policy in config.BATCH_POLICIES))


@dataclass(frozen=True)
class ComparePlan:
    """User counts and durations of the comparison (written to plan.json as they are)."""

    seed_users: dict[str, int]  #: users per mode for the guide's own runs
    equal_users: int
    users_sweep: tuple[int, ...]
    duration_s: float  #: measured seconds of the guide's runs and the equal-users runs
    sweep_duration_s: float
    repeats: int
    seed_spawn_rate: dict[str, float] | None  #: None: start all users within a second

    def loads(self, mode: str) -> tuple[Load, ...]:
        """Every run of one variant, fewest users first, each tagged with the plan parts it serves."""
        roles = merge_loads([(self.seed_users[mode], "seed"), (self.equal_users, "equal"),
                             *((users, "sweep") for users in self.users_sweep)])
        rate = (self.seed_spawn_rate or {}).get(mode)
        return tuple(Load(users, self.duration_s if {"seed", "equal"} & set(tags) else self.sweep_duration_s,
                          rate if "seed" in tags else None, tags) for users, tags in roles.items())


def variants(batch_size: int, batch_timeout: float, names: Sequence[str] = VARIANT_NAMES) -> list[Variant]:
    """The variants to compare, by name."""
    batch = [batch_variant(f"batch-{policy}", batch_size, batch_timeout, policy)
             for policy in config.BATCH_POLICIES]
    known = {v.name: v for v in [INDIVIDUAL, *batch]}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown variants {unknown}: use some of {list(known)}")
    return [known[n] for n in names]


def build_sessions(chosen: Sequence[Variant], plan: ComparePlan) -> list[Session]:
    """Sessions in ABAB order: every variant once per repeat, in the same order each time."""
    return alternate(chosen, lambda variant: plan.loads(variant.mode), plan.repeats)


def _arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--duration", type=float, default=None, help="measured seconds of the guide's runs (60)")
    add("--sweep-duration", type=float, default=None, help="measured seconds per sweep point (20)")
    add("--users-sweep", type=int_list, default=None, help="users of the sweep (1,2,4,8,16,32)")
    add("--seed-users", type=int_list, default=None, help="the guide's users: individual,batch (10,20)")
    add("--equal-users", type=int, default=None, help="users for every variant (20)")
    add("--variants", default=",".join(VARIANT_NAMES), help="comma-separated subset of %(default)s")
    add("--batch-size", type=int, default=config.value("BATCH_SIZE"), help="BATCH_SIZE (%(default)s)")
    add("--batch-timeout", type=float, default=config.value("BATCH_TIMEOUT"),
        help="BATCH_TIMEOUT s (%(default)s)")
    add("--benchmark-sizes", type=int_list, default=None, help="model-only batch sizes (1,2,4,8,16)")
    add("--no-benchmark", action="store_true", help="skip the model-only ceiling")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` fills in tiny defaults for whatever is not given."""
    parser, args = parse_plan_args("compare", __doc__.splitlines()[0], argv, _arguments, {
        "repeats": (1, defaults.REPEATS),
        "duration": (3.0, defaults.DURATION_S),
        "sweep_duration": (3.0, defaults.SWEEP_DURATION_S),
        "users_sweep": ([1, 4], list(defaults.USERS_SWEEP)),
        "seed_users": ([4, 4], [defaults.SEED_USERS["individual"], defaults.SEED_USERS["batch"]]),
        "equal_users": (4, defaults.EQUAL_USERS),
        "benchmark_sizes": ([1, 2, 4], list(defaults.BENCHMARK_SIZES)),
    })
    if len(args.seed_users) != 2:
        parser.error("--seed-users takes two numbers: individual,batch")
    args.variant_names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "individual" not in args.variant_names:
        parser.error("--variants must include individual, the baseline")
    try:
        args.chosen = variants(args.batch_size, args.batch_timeout, args.variant_names)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; 0 when every session ran, 1 when some failed, 2 when nothing was measured."""
    args = parse_args(argv)
    plan = ComparePlan({"individual": args.seed_users[0], "batch": args.seed_users[1]}, args.equal_users,
                       tuple(args.users_sweep), args.duration, args.sweep_duration, args.repeats,
                       None if args.quick else dict(defaults.SEED_SPAWN_RATE))
    seed_batch = "batch-timeout" if "batch-timeout" in args.variant_names else args.chosen[-1].name
    record = {**asdict(plan), "baseline": INDIVIDUAL.name, "seed_batch": seed_batch,
              "benchmark_sizes": None if args.no_benchmark else args.benchmark_sizes}

    def benchmark(run_dir: Path) -> list[str]:
        """The model-only ceiling, before any stack so the machine is quiet (--quick: fewer runs)."""
        if args.no_benchmark or run_benchmark(
                run_dir / "benchmark.json", sizes=args.benchmark_sizes, log_path=run_dir / "benchmark.log",
                extra_args=["--repeats", "3", "--warmup", "1"] if args.quick else []) is not None:
            return []
        return ["model-only benchmark (python -m loadtest.model_benchmark) gave no results; "
                "see benchmark.log"]

    return run_plan(Plan("compare", build_sessions(args.chosen, plan), record,
                         lambda run_dir, out: build_report(run_dir,
                                                           out).headline, before=benchmark), args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
