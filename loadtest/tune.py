"""Measure BATCH_SIZE × BATCH_TIMEOUT under low, medium and high load (``make tune``).

``python -m loadtest.tune`` starts one stack per configuration (plus the
individual baseline), warms it up, measures each load level with locust the
same way ``compare`` does, then writes the tuning section of
``docs/benchmarks.md`` (the guide's "Valores recomendados", measured) and
prints one recommendation per load level.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import defaults
from .driver import (
    Session,
    add_common_arguments,
    base_plan,
    check_common_arguments,
    command_line,
    float_list,
    int_list,
    make_progress,
    now_iso,
    prepare_run_dir,
    report_failed,
    run_sessions,
    session_options,
    write_plan,
)
from .progress import format_seconds
from .runner import Load
from .stack import Variant
from .tuning import build_tuning_report, describe

__all__ = ["build_sessions", "grid", "main", "parse_args", "parse_loads"]


def parse_loads(text: str) -> dict[str, int]:
    """``"low=2,medium=8,high=20"`` -> ``{"low": 2, ...}`` (argparse type)."""
    loads: dict[str, int] = {}
    for part in text.split(","):
        name, _, users = part.partition("=")
        try:
            loads[name.strip()] = int(users)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"expected name=users pairs such as low=2, got {part!r}"
            ) from exc
        if not name.strip() or loads[name.strip()] < 1:
            raise argparse.ArgumentTypeError(f"expected name=users with users >= 1, got {part!r}")
    return loads


def grid(
    sizes: Sequence[int], timeouts: Sequence[float], policy: str, baseline: bool = True
) -> list[Variant]:
    """One variant per (BATCH_SIZE, BATCH_TIMEOUT), after the individual baseline when asked."""
    variants = [Variant("individual", {"USE_BATCH_PROCESSING": "false"})] if baseline else []
    for size in sizes:
        for timeout in timeouts:
            env = {
                "USE_BATCH_PROCESSING": "true",
                "BATCH_SIZE": str(size),
                "BATCH_TIMEOUT": f"{timeout:g}",
                "BATCH_POLICY": policy,
            }
            variants.append(Variant(f"b{size}-t{timeout:g}", env))
    return variants


def build_sessions(
    variants: Sequence[Variant], loads: dict[str, int], duration_s: float, repeats: int
) -> list[Session]:
    """Each variant measures every load level, lightest first; variants alternate within each repeat."""
    by_users: dict[int, list[str]] = {}
    for level, users in loads.items():
        by_users.setdefault(users, []).append(level)
    plan = tuple(Load(users, duration_s, None, tuple(levels)) for users, levels in sorted(by_users.items()))
    return [
        Session(variant, plan, repeat, offset)
        for repeat in range(1, repeats + 1)
        for offset, variant in enumerate(variants)
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` fills in tiny defaults for whatever is not given."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.tune", description=__doc__.splitlines()[0])
    add_common_arguments(parser, "tune")
    parser.add_argument("--sizes", type=int_list, default=None, help="BATCH_SIZE values (2,4,8)")
    parser.add_argument(
        "--timeouts", type=float_list, default=None, help="BATCH_TIMEOUT values (0.05,0.5,2.0)"
    )
    parser.add_argument(
        "--loads", type=parse_loads, default=None, help="load levels (low=2,medium=8,high=20)"
    )
    parser.add_argument(
        "--policy", default="timeout", help="BATCH_POLICY of every configuration (%(default)s)"
    )
    parser.add_argument("--duration", type=float, default=None, help="measured seconds per load level (20)")
    parser.add_argument("--p95-limit-ms", type=float, default=None, help="p95 limit (default: 2 × best p95)")
    parser.add_argument("--no-baseline", action="store_true", help="do not measure the individual baseline")
    args = parser.parse_args(argv)
    fill = {
        "repeats": (1, 1),
        "warmup": (1.0, defaults.WARMUP_S),
        "duration": (3.0, defaults.SWEEP_DURATION_S),
        "sizes": ([2, 4], list(defaults.TUNE_SIZES)),
        "timeouts": ([0.05], list(defaults.TUNE_TIMEOUTS)),
        "loads": ({"low": 1, "high": 4}, dict(defaults.TUNE_LOADS)),
    }
    for name, (small, full) in fill.items():
        if getattr(args, name) is None:
            setattr(args, name, small if args.quick else full)
    check_common_arguments(parser, args)
    if args.duration <= 0:
        parser.error("--duration must be > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the grid; 0 when every session ran, 1 when some failed, 2 when nothing was measured."""
    args = parse_args(argv)
    try:
        variants = grid(args.sizes, args.timeouts, args.policy, baseline=not args.no_baseline)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_dir = prepare_run_dir("tune", args.csv_dir)
    options = session_options(args, run_dir)
    sessions = build_sessions(variants, args.loads, args.duration, args.repeats)
    record = base_plan("tune", command_line("loadtest.tune", argv), options)
    record.update(
        variants=[{"name": v.name, "mode": v.mode, "env": dict(v.env)} for v in variants],
        loads=args.loads,
        policy=args.policy,
        sizes=args.sizes,
        timeouts=args.timeouts,
        duration_s=args.duration,
        repeats=args.repeats,
        p95_limit_ms=args.p95_limit_ms,
    )
    write_plan(run_dir, record)
    progress = make_progress(sessions, options)
    run_sessions(sessions, options, record, progress)
    record["finished_at"] = now_iso()
    write_plan(run_dir, record)
    try:
        recommendations = build_tuning_report(run_dir, args.out, args.p95_limit_ms)
    except ValueError as exc:
        return report_failed(exc, record)
    print(f"done in {format_seconds(progress.elapsed())}; report: {args.out}; runs: {run_dir}")
    for rec in recommendations:
        print(describe(rec))
    for error in record["errors"]:
        print(f"problem: {error}", file=sys.stderr)
    return 1 if record["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
