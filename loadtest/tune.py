"""Measure BATCH_SIZE × BATCH_TIMEOUT under low, medium and high load (``make tune``).

``python -m loadtest.tune`` starts one stack per configuration (plus the
individual baseline), warms it up and measures each load level with locust as
``compare`` does (the same driver), then writes the tuning section of
``docs/benchmarks.md`` and prints one recommendation per load level.

Per load level the recommendation is the batch configuration with the highest
throughput among those whose p95 latency stays within a limit and whose error
rate is at most 1 %. The limit is ``--p95-limit-ms`` when given, else twice
the lowest p95 any configuration (the individual baseline included) reached at
that load: "as fast as possible without more than doubling the tail latency".
The measured table reproduces the guide's "Valores recomendados" (in Spanish,
as there); the table of every configuration is in English.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import defaults
from .ceiling import read_benchmark
from .driver import Load, Plan, Session, float_list, int_list, parse_plan_args, run_plan
from .markdown import fmt, fmt_spread, replace_section, table
from .report import ASSETS, write_runs_csv
from .results import RunRecord, Spread, load_runs, select, spread_of
from .stack import Variant

__all__ = ["SECTION", "Cell", "Recommendation", "build_sessions", "build_tuning_report", "describe", "grid",
           "main", "parse_args", "parse_loads", "recommend"]

SECTION = "tuning"
#: Configurations failing more requests than this are never recommended.
MAX_ERROR_PERCENT = 1.0
#: Default p95 limit, as a multiple of the best p95 at that load.
P95_FACTOR = 2.0
#: The guide's scenario names for the load levels.
_ESCENARIOS = {"low": "Baja carga", "medium": "Carga media", "high": "Alta carga"}


# -- the plan -------------------------------------------------------------------

def parse_loads(text: str) -> dict[str, int]:
    """``"low=2,medium=8,high=20"`` -> ``{"low": 2, ...}`` (argparse type)."""
    loads: dict[str, int] = {}
    for part in text.split(","):
        name, _, users = part.partition("=")
        try:
            loads[name.strip()] = int(users)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected name=users pairs such as low=2, got {part!r}") \
                from exc
        if not name.strip() or loads[name.strip()] < 1:
            raise argparse.ArgumentTypeError(f"expected name=users with users >= 1, got {part!r}")
    return loads


def grid(sizes: Sequence[int], timeouts: Sequence[float], policy: str,
         baseline: bool = True) -> list[Variant]:
    """One variant per (BATCH_SIZE, BATCH_TIMEOUT), after the individual baseline when asked."""
    variants = [Variant("individual", {"USE_BATCH_PROCESSING": "false"})] if baseline else []
    variants += [Variant(f"b{size}-t{timeout:g}", {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": str(size),
                                                   "BATCH_TIMEOUT": f"{timeout:g}", "BATCH_POLICY": policy})
                 for size in sizes for timeout in timeouts]
    return variants


def build_sessions(variants: Sequence[Variant], loads: Mapping[str, int], duration_s: float,
                   repeats: int) -> list[Session]:
    """Each variant measures every load level, lightest first; variants alternate within each repeat."""
    by_users: dict[int, list[str]] = {}
    for level, users in loads.items():
        by_users.setdefault(users, []).append(level)
    plan = tuple(Load(users, duration_s, None, tuple(levels)) for users, levels in sorted(by_users.items()))
    return [Session(variant, plan, repeat, offset)
            for repeat in range(1, repeats + 1) for offset, variant in enumerate(variants)]


# -- the recommendation -------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One configuration at one load level, over repeats."""

    variant: str
    env: Mapping[str, str]
    users: int
    rps: Spread | None
    p50: Spread | None
    p95: Spread | None
    errors: Spread | None
    batch: Spread | None

    @property
    def is_batch(self) -> bool:
        """True for batch configurations (not the individual baseline)."""
        return self.env.get("USE_BATCH_PROCESSING", "").lower() == "true"


def cell(records: Sequence[RunRecord], variant: str, users: int) -> Cell | None:
    """``variant`` at ``users``, None when it was not measured."""
    runs = select(records, variant=variant, users=users)
    if not runs:
        return None
    return Cell(variant, runs[0].env, users, spread_of(runs, lambda r: r.stats.requests_per_s),
                spread_of(runs, lambda r: r.stats.p50_ms), spread_of(runs, lambda r: r.stats.p95_ms),
                spread_of(runs, lambda r: r.stats.error_percent), spread_of(runs, lambda r: r.mean_batch))


@dataclass(frozen=True)
class Recommendation:
    """The pick for one load level, and by which rule."""

    level: str
    users: int
    cell: Cell | None
    limit_ms: float | None
    baseline: Cell | None
    #: ``within`` (fastest within the limits), ``lowest-p95`` (none within: the lowest p95) or ``none``.
    rule: str
    limit_given: bool = False

    @property
    def individual_faster(self) -> bool:
        b, c = self.baseline, self.cell
        return bool(b and c and b.rps and c.rps and b.rps.median > c.rps.median)


def recommend(level: str, users: int, cells: Sequence[Cell],
              p95_limit_ms: float | None = None) -> Recommendation:
    """Highest median throughput among batch cells within the p95 limit and the error budget."""
    baseline = next((c for c in cells if not c.is_batch), None)
    p95s = [c.p95.median for c in cells if c.p95 is not None]
    limit = p95_limit_ms if p95_limit_ms is not None else (P95_FACTOR * min(p95s) if p95s else None)
    healthy = [c for c in cells if c.is_batch and c.rps is not None and c.p95 is not None
               and (c.errors is None or c.errors.median <= MAX_ERROR_PERCENT)]
    within = [c for c in healthy if limit is None or c.p95.median <= limit]  # type: ignore[union-attr]
    given = p95_limit_ms is not None
    if within:
        best = max(within, key=lambda c: (c.rps.median, -c.p95.median))  # type: ignore[union-attr]
        return Recommendation(level, users, best, limit, baseline, "within", given)
    if healthy:
        best = min(healthy, key=lambda c: c.p95.median)  # type: ignore[union-attr]
        return Recommendation(level, users, best, limit, baseline, "lowest-p95", given)
    return Recommendation(level, users, None, limit, baseline, "none", given)


def reason(rec: Recommendation, lang: str = "en") -> str:
    """Why ``rec`` picked what it did, in English (the console) or Spanish (the guide's table)."""
    limit = f"{rec.limit_ms:.0f}" if rec.limit_ms is not None else "?"
    if lang == "es":
        how = "dado" if rec.limit_given else f"{P95_FACTOR:g} × el mejor p95 con esta carga"
        text = {"within": f"mayor throughput con p95 ≤ {limit} ms ({how}) y "
                          f"≤ {MAX_ERROR_PERCENT:g} % de errores",
                "lowest-p95": f"ninguna configuración mantuvo p95 ≤ {limit} ms; esta tuvo el menor p95",
                "none": "ninguna configuración batch funcionó sin errores"}[rec.rule]
        slower = "; el modo individual (USE_BATCH_PROCESSING=false) es más rápido con esta carga"
    else:
        how = "given" if rec.limit_given else f"{P95_FACTOR:g} × the best p95 at this load"
        text = {"within": f"highest throughput with p95 ≤ {limit} ms ({how}) and "
                          f"≤ {MAX_ERROR_PERCENT:g} % errors",
                "lowest-p95": f"no configuration kept p95 ≤ {limit} ms; this one had the lowest p95",
                "none": "no batch configuration ran without errors"}[rec.rule]
        slower = "; individual mode (USE_BATCH_PROCESSING=false) is faster at this load"
    return text + (slower if rec.individual_faster else "")


def _ratio(c: Cell | None, baseline: Cell | None) -> str:
    if not c or not baseline or not c.rps or not baseline.rps or baseline.rps.median <= 0:
        return "—"
    return f"×{c.rps.median / baseline.rps.median:.2f}"


def describe(rec: Recommendation) -> str:
    """One console line per load level."""
    if rec.cell is None:
        return f"{rec.level} load ({rec.users} users): no recommendation ({reason(rec)})"
    env = rec.cell.env
    rps = rec.cell.rps.median if rec.cell.rps else float("nan")
    p95 = rec.cell.p95.median if rec.cell.p95 else float("nan")
    return (f"{rec.level} load ({rec.users} users): BATCH_SIZE={env.get('BATCH_SIZE')} "
            f"BATCH_TIMEOUT={env.get('BATCH_TIMEOUT')} -> {rps:.2f} requests/s, p95 {p95:.0f} ms "
            f"(individual {_ratio(rec.cell, rec.baseline)}); {reason(rec)}")


# -- the report -------------------------------------------------------------------

def _recommended_table(recs: Sequence[Recommendation]) -> str:
    rows = []
    for r in recs:
        c = r.cell
        env = c.env if c else {}
        rows.append([_ESCENARIOS.get(r.level, r.level), str(r.users), env.get("BATCH_SIZE", "—"),
                     env.get("BATCH_TIMEOUT", "—"), fmt_spread(c.rps if c else None, 2),
                     _ratio(c, r.baseline),
                     fmt_spread(c.p50 if c else None, 0), fmt_spread(c.p95 if c else None, 0),
                     fmt_spread(c.batch if c else None, 2), fmt_spread(c.errors if c else None, 2),
                     reason(r, "es")])
    return table(["Escenario", "Usuarios", "BATCH_SIZE", "BATCH_TIMEOUT", "RPS", "Mejora frente a individual",
                  "Latencia p50, ms", "Latencia p95, ms", "Tamaño promedio de batch", "Errores, %",
                  "Descripción"], rows)


def _grid_table(records: Sequence[RunRecord], variants: Sequence[str], loads: Mapping[str, int]) -> str:
    def entry(c: Cell | None) -> str:
        if c is None:
            return "—"
        return f"{fmt(c.rps.median if c.rps else None, 2)} / {fmt(c.p95.median if c.p95 else None, 0)}"
    return table(["Configuration", *(f"{level} ({users} users)" for level, users in loads.items())],
                 [[v, *(entry(cell(records, v, users)) for users in loads.values())] for v in variants])


def build_tuning_report(run_dir: Path, out: Path, p95_limit_ms: float | None = None) -> list[Recommendation]:
    """Write ``tuning.csv`` and the tuning section of ``out``; return the recommendations."""
    plan = json.loads((run_dir / "plan.json").read_text())
    records = load_runs(run_dir)
    if not records:
        raise ValueError(f"no measured runs under {run_dir / 'runs'}: nothing to report")
    variants = [v["name"] for v in plan.get("variants") or []] or sorted({r.variant for r in records})
    loads: dict[str, int] = plan.get("loads") or {str(u): u for u in sorted({r.users for r in records})}
    limit = p95_limit_ms if p95_limit_ms is not None else plan.get("p95_limit_ms")
    write_runs_csv(records, out.parent / ASSETS / "tuning.csv", read_benchmark(run_dir / "benchmark.json"))
    recs = [recommend(level, users, [c for v in variants if (c := cell(records, v, users))], limit)
            for level, users in loads.items()]
    lines = [
        "## Valores recomendados (measured)", "",
        f"Generated by `{plan.get('command', 'python -m loadtest.tune')}` ({plan.get('started_at', '?')} to "
        f"{plan.get('finished_at', '?')}), BATCH_POLICY={plan.get('policy', '?')}. Each configuration ran "
        f"on a "
        f"freshly started stack after a dropped warm-up, with closed-loop users; values are medians over "
        f"{max(r.repeat for r in records)} repeat(s), (min–max) in brackets, read from the runs' locust CSV "
        f"files (combined in [{ASSETS}/tuning.csv]({ASSETS}/tuning.csv)). The first table is the guide's "
        f"\"Valores recomendados\", measured, in the guide's words; the second lists every "
        f"configuration.", "",
        _recommended_table(recs), "",
        "Every configuration: requests per second / latency p95 in ms (medians).", "",
        _grid_table(records, variants, loads), "",
        f"Raw files: `{run_dir}`.",
    ]
    if plan.get("errors"):
        lines += ["", "Problems during the run:", "", *(f"- {e}" for e in plan["errors"])]
    replace_section(out, SECTION, "\n".join(lines))
    return recs


# -- the command line ---------------------------------------------------------------

def _arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--sizes", type=int_list, default=None, help="BATCH_SIZE values (2,4,8)")
    add("--timeouts", type=float_list, default=None, help="BATCH_TIMEOUT values (0.05,0.5,2.0)")
    add("--loads", type=parse_loads, default=None, help="load levels (low=2,medium=8,high=20)")
    add("--policy", default="timeout", help="BATCH_POLICY of every configuration (%(default)s)")
    add("--duration", type=float, default=None, help="measured seconds per load level (20)")
    add("--p95-limit-ms", type=float, default=None, help="p95 limit (default: 2 × best p95)")
    add("--no-baseline", action="store_true", help="do not measure the individual baseline")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` fills in tiny defaults for whatever is not given."""
    parser, args = parse_plan_args("tune", __doc__.splitlines()[0], argv, _arguments, {
        "repeats": (1, 1),
        "duration": (3.0, defaults.SWEEP_DURATION_S),
        "sizes": ([2, 4], list(defaults.TUNE_SIZES)),
        "timeouts": ([0.05], list(defaults.TUNE_TIMEOUTS)),
        "loads": ({"low": 1, "high": 4}, dict(defaults.TUNE_LOADS)),
    })
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
    record = {"loads": args.loads, "policy": args.policy, "sizes": args.sizes, "timeouts": args.timeouts,
              "duration_s": args.duration, "repeats": args.repeats, "p95_limit_ms": args.p95_limit_ms}
    return run_plan(Plan(
        "tune", build_sessions(variants, args.loads, args.duration, args.repeats), record,
        report=lambda run_dir, out: [describe(r)
                                     for r in build_tuning_report(run_dir, out, args.p95_limit_ms)],
    ), args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
