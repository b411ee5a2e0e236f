"""Run the batch-processing guide's test plan end to end and write the report.

``python -m loadtest.compare`` (``make compare``):

1. times the model alone (``python -m workers.benchmark``), the ceiling;
2. for each repeat, for each variant in turn (A B C A B C: individual, batch
   with BATCH_POLICY=timeout, batch with BATCH_POLICY=adaptive) starts a fresh
   stack, waits for /readyz, warms it up (dropped), then measures with locust:
   the guide's user counts (10 individual, 20 batch), the same user count for
   every variant, and a sweep of user counts;
3. builds the load-comparison section of ``docs/benchmarks.md`` with plots and
   a combined CSV, and prints the throughput ratios with both numbers.

Speed is reported, never asserted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from common import config

from . import defaults
from .driver import Load, Plan, Session, int_list, parse_plan_args, run_plan
from .report import build_report
from .stack import Variant

__all__ = ["ComparePlan", "build_sessions", "main", "parse_args", "variants"]

#: Variant names, in the order they alternate.
VARIANT_NAMES = ("individual", "batch-timeout", "batch-adaptive")


@dataclass(frozen=True)
class ComparePlan:
    """User counts and durations of the comparison."""

    seed_users: dict[str, int]  #: users per mode for the guide's own runs
    equal_users: int
    users_sweep: tuple[int, ...]
    duration_s: float  #: measured seconds of the guide's runs and the equal-users runs
    sweep_duration_s: float
    repeats: int
    seed_spawn_rate: dict[str, float] | None  #: None: start all users within a second

    def loads(self, mode: str) -> tuple[Load, ...]:
        """Every run of one variant, fewest users first, each tagged with the plan parts it serves."""
        roles: dict[int, list[str]] = {}
        roles.setdefault(self.seed_users[mode], []).append("seed")
        roles.setdefault(self.equal_users, []).append("equal")
        for users in self.users_sweep:
            roles.setdefault(users, []).append("sweep")
        loads = []
        for users in sorted(roles):
            tags = tuple(roles[users])
            long_run = "seed" in tags or "equal" in tags
            rate = self.seed_spawn_rate.get(mode) if self.seed_spawn_rate and "seed" in tags else None
            loads.append(Load(users, self.duration_s if long_run else self.sweep_duration_s, rate, tags))
        return tuple(loads)


def variants(batch_size: int, batch_timeout: float, names: Sequence[str] = VARIANT_NAMES) -> list[Variant]:
    """The variants to compare, by name."""
    batch = {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": str(batch_size),
             "BATCH_TIMEOUT": f"{batch_timeout:g}"}
    known = {
        "individual": Variant("individual", {"USE_BATCH_PROCESSING": "false"}),
        "batch-timeout": Variant("batch-timeout", {**batch, "BATCH_POLICY": "timeout"}),
        "batch-adaptive": Variant("batch-adaptive", {**batch, "BATCH_POLICY": "adaptive"}),
    }
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown variants {unknown}: use some of {list(known)}")
    return [known[n] for n in names]


def build_sessions(chosen: Sequence[Variant], plan: ComparePlan) -> list[Session]:
    """Sessions in ABAB order: every variant once per repeat, in the same order each time."""
    return [Session(variant, plan.loads(variant.mode), repeat, offset)
            for repeat in range(1, plan.repeats + 1) for offset, variant in enumerate(chosen)]


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
    if args.duration <= 0 or args.sweep_duration <= 0:
        parser.error("--duration and --sweep-duration must be > 0")
    args.variant_names = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "individual" not in args.variant_names:
        parser.error("--variants must include individual, the baseline")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; 0 when every session ran, 1 when some failed, 2 when nothing was measured."""
    args = parse_args(argv)
    try:
        chosen = variants(args.batch_size, args.batch_timeout, args.variant_names)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plan = ComparePlan(
        seed_users={"individual": args.seed_users[0], "batch": args.seed_users[1]},
        equal_users=args.equal_users,
        users_sweep=tuple(args.users_sweep),
        duration_s=args.duration,
        sweep_duration_s=args.sweep_duration,
        repeats=args.repeats,
        seed_spawn_rate=None if args.quick else dict(defaults.SEED_SPAWN_RATE),
    )
    record = {
        "baseline": "individual",
        "seed_batch": "batch-timeout" if "batch-timeout" in args.variant_names else chosen[-1].name,
        "seed_users": plan.seed_users, "equal_users": plan.equal_users, "users_sweep": list(plan.users_sweep),
        "duration_s": plan.duration_s, "sweep_duration_s": plan.sweep_duration_s, "repeats": plan.repeats,
        "benchmark_sizes": None if args.no_benchmark else args.benchmark_sizes,
    }
    return run_plan(Plan(
        "compare", build_sessions(chosen, plan), record,
        report=lambda run_dir, out: build_report(run_dir, out).headline,
        benchmark_sizes=None if args.no_benchmark else args.benchmark_sizes,
        # --quick: fewer timed runs, so the ceiling takes seconds too.
        benchmark_args=["--repeats", "3", "--warmup", "1"] if args.quick else [],
    ), args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
