"""Measure BATCH_SIZE × BATCH_TIMEOUT under low, medium and high load (``make tune``).

One stack per configuration plus the baseline, run by ``compare``'s driver; per load level the
recommendation is the fastest batch configuration with at most 1 % errors and p95 within
``--p95-limit-ms``, by default twice the best p95 at that load ("as fast as possible without
more than doubling the tail latency"). The guide's table is reproduced in its Spanish.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common import config

from . import defaults, driver
from .markdown import fmt, fmt_spread, replace_section, table
from .report import ASSETS, footer, preamble, read_benchmark, write_runs_csv
from .results import RunRecord, Spread, load_plan, select, spread_of
from .stack import INDIVIDUAL, Variant, batch_variant

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
    try:
        loads = {name.strip(): int(users) for name, _, users in (p.partition("=") for p in text.split(","))}
    except ValueError:
        loads = {}
    if not loads or "" in loads or min(loads.values()) < 1:
        raise argparse.ArgumentTypeError(f"expected name=users pairs, users >= 1, as low=2; got {text!r}")
    return loads


def grid(sizes: Sequence[int], timeouts: Sequence[float], policy: str,
         baseline: bool = True) -> list[Variant]:
    """One variant per (BATCH_SIZE, BATCH_TIMEOUT), after the individual baseline when asked."""
    return [INDIVIDUAL] * baseline + [batch_variant(f"b{size}-t{timeout:g}", size, timeout, policy)
                                      for size in sizes for timeout in timeouts]


def build_sessions(variants: Sequence[Variant], loads: Mapping[str, int], duration_s: float,
                   repeats: int) -> list[driver.Session]:
    """Each variant measures every load level, lightest first; variants alternate within each repeat."""
    levels = driver.merge_loads((users, level) for level, users in loads.items())
    plan = tuple(driver.Load(users, duration_s, None, tags) for users, tags in levels.items())
    return driver.alternate(variants, lambda _variant: plan, repeats)


# -- the recommendation -------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One configuration at one load level, over repeats."""

    variant: str
    env: Mapping[str, str]
    rps: Spread | None
    p50: Spread | None
    p95: Spread | None
    errors: Spread | None
    batch: Spread | None

    @property
    def is_batch(self) -> bool:
        """True for batch configurations (not the individual baseline)."""
        return config.parse_bool(self.env.get("USE_BATCH_PROCESSING", "false"))


def cell(records: Sequence[RunRecord], variant: str, users: int) -> Cell | None:
    """``variant`` at ``users``, None when it was not measured."""
    runs = select(records, variant=variant, users=users)
    if not runs:
        return None
    return Cell(variant, runs[0].env, spread_of(runs, lambda r: r.stats.requests_per_s),
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


#: Why a recommendation picked what it did: English for the console, Spanish for the guide's table.
_REASONS = {
    "en": {"given": "given", "factor": "{factor} × the best p95 at this load",
           "within": "highest throughput with p95 ≤ {limit} ms ({how}) and ≤ {errors} % errors",
           "lowest-p95": "no configuration kept p95 ≤ {limit} ms; this one had the lowest p95",
           "none": "no batch configuration ran without errors",
           "slower": "; individual mode (USE_BATCH_PROCESSING=false) is faster at this load"},
    "es": {"given": "dado", "factor": "{factor} × el mejor p95 con esta carga",
           "within": "mayor throughput con p95 ≤ {limit} ms ({how}) y ≤ {errors} % de errores",
           "lowest-p95": "ninguna configuración mantuvo p95 ≤ {limit} ms; esta tuvo el menor p95",
           "none": "ninguna configuración batch funcionó sin errores",
           "slower": "; el modo individual (USE_BATCH_PROCESSING=false) es más rápido con esta carga"},
}


def reason(rec: Recommendation, lang: str = "en") -> str:
    """Why ``rec`` picked what it did, in English (the console) or Spanish (the guide's table)."""
    words = _REASONS[lang]
    how = words["given"] if rec.limit_given else words["factor"].format(factor=f"{P95_FACTOR:g}")
    text = words[rec.rule].format(limit=f"{rec.limit_ms:.0f}" if rec.limit_ms is not None else "?", how=how,
                                  errors=f"{MAX_ERROR_PERCENT:g}")
    return text + (words["slower"] if rec.individual_faster else "")


def _median(value: Spread | None) -> float | None:
    return value.median if value else None


def _ratio(c: Cell | None, baseline: Cell | None) -> str:
    if not c or not baseline or not c.rps or not baseline.rps or baseline.rps.median <= 0:
        return "—"
    return f"×{c.rps.median / baseline.rps.median:.2f}"


def describe(rec: Recommendation) -> str:
    """One console line per load level."""
    if rec.cell is None:
        return f"{rec.level} load ({rec.users} users): no recommendation ({reason(rec)})"
    c = rec.cell
    return (f"{rec.level} load ({rec.users} users): BATCH_SIZE={c.env.get('BATCH_SIZE')} "
            f"BATCH_TIMEOUT={c.env.get('BATCH_TIMEOUT')} -> {fmt(_median(c.rps), 2)} requests/s, "
            f"p95 {fmt(_median(c.p95), 0)} ms "
            f"(individual {_ratio(rec.cell, rec.baseline)}); {reason(rec)}")


# -- the report -------------------------------------------------------------------

def _recommended_table(recs: Sequence[Recommendation]) -> str:
    rows = []
    for r in recs:
        c = r.cell or Cell("", {}, None, None, None, None, None)
        rows.append([_ESCENARIOS.get(r.level, r.level), str(r.users), c.env.get("BATCH_SIZE", "—"),
                     c.env.get("BATCH_TIMEOUT", "—"), fmt_spread(c.rps, 2), _ratio(r.cell, r.baseline),
                     fmt_spread(c.p50, 0), fmt_spread(c.p95, 0), fmt_spread(c.batch, 2),
                     fmt_spread(c.errors, 2), reason(r, "es")])
    return table(["Escenario", "Usuarios", "BATCH_SIZE", "BATCH_TIMEOUT", "RPS", "Mejora frente a individual",
                  "Latencia p50, ms", "Latencia p95, ms", "Tamaño promedio de batch", "Errores, %",
                  "Descripción"], rows)


def _grid_table(records: Sequence[RunRecord], variants: Sequence[str], loads: Mapping[str, int]) -> str:
    def entry(c: Cell | None) -> str:
        return "—" if c is None else f"{fmt(_median(c.rps), 2)} / {fmt(_median(c.p95), 0)}"
    return table(["Configuration", *(f"{level} ({users} users)" for level, users in loads.items())],
                 [[v, *(entry(cell(records, v, users)) for users in loads.values())] for v in variants])


def build_tuning_report(run_dir: Path, out: Path, p95_limit_ms: float | None = None) -> list[Recommendation]:
    """Write ``tuning.csv`` and the tuning section of ``out``; return the recommendations."""
    plan, records, variants = load_plan(run_dir)
    loads: dict[str, int] = plan.get("loads") or {str(u): u for u in sorted({r.users for r in records})}
    limit = p95_limit_ms if p95_limit_ms is not None else plan.get("p95_limit_ms")
    write_runs_csv(records, out.parent / ASSETS / "tuning.csv", read_benchmark(run_dir / "benchmark.json"))
    recs = [recommend(level, users, [c for v in variants if (c := cell(records, v, users))], limit)
            for level, users in loads.items()]
    lines = [
        "## Valores recomendados (measured)", "",
        preamble(plan, records, "tune", "tuning.csv") + f" Every configuration has BATCH_POLICY="
        f"{plan.get('policy', '?')}. The first table is the guide's \"Valores recomendados\", measured, in "
        "the guide's words; the second lists every configuration.", "",
        _recommended_table(recs), "",
        "Every configuration: requests per second / latency p95 in ms (medians).", "",
        _grid_table(records, variants, loads), "", *footer(plan, run_dir),
    ]
    replace_section(out, SECTION, "\n".join(lines))
    return recs


# -- the command line ---------------------------------------------------------------

def _arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--sizes", type=driver.int_list, default=None, help="BATCH_SIZE values (2,4,8)")
    add("--timeouts", type=driver.float_list, default=None, help="BATCH_TIMEOUT values (0.05,0.5,2.0)")
    add("--loads", type=parse_loads, default=None, help="load levels (low=2,medium=8,high=20)")
    add("--policy", default="timeout", choices=config.BATCH_POLICIES,
        help="BATCH_POLICY of every configuration (%(default)s)")
    add("--duration", type=float, default=None, help="measured seconds per load level (20)")
    add("--p95-limit-ms", type=float, default=None, help="p95 limit (default: 2 × best p95)")
    add("--no-baseline", action="store_true", help="do not measure the individual baseline")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` fills in tiny defaults for whatever is not given."""
    _, args = driver.parse_plan_args("tune", __doc__.splitlines()[0], argv, _arguments, {
        "repeats": (1, 1),
        "duration": (3.0, defaults.SWEEP_DURATION_S),
        "sizes": ([2, 4], list(defaults.TUNE_SIZES)),
        "timeouts": ([0.05], list(defaults.TUNE_TIMEOUTS)),
        "loads": ({"low": 1, "high": 4}, dict(defaults.TUNE_LOADS)),
    })
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the grid; 0 when every session ran, 1 when some failed, 2 when nothing was measured."""
    args = parse_args(argv)
    variants = grid(args.sizes, args.timeouts, args.policy, baseline=not args.no_baseline)
    record = {"loads": args.loads, "policy": args.policy, "sizes": args.sizes, "timeouts": args.timeouts,
              "duration_s": args.duration, "p95_limit_ms": args.p95_limit_ms}
    return driver.run_plan(driver.Plan(
        "tune", build_sessions(variants, args.loads, args.duration, args.repeats), record,
        lambda run_dir, out: [describe(r) for r in build_tuning_report(run_dir, out, args.p95_limit_ms)],
    ), args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
