"""Measure BATCH_SIZE × BATCH_TIMEOUT under low, medium and high load (``make tune``).

Per load level the recommendation is the fastest batch configuration with at most 1 % errors and
p95 within ``--p95-limit-ms``, by default twice the best p95 at that load: as fast as possible
without more than doubling the tail latency. The guide's table is in its Spanish.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import config

from .driver import Load, Plan, PlanCLI, alternate, float_list, int_list, merge_loads
from .report import ASSETS, fmt, fmt_spread, footer, median, preamble, ratio, replace_section, table
from .results import RunRecord, Spread, load_plan, select, spread_of, write_runs_csv
from .stack import INDIVIDUAL, Variant, batch_variant

__all__ = ["SECTION", "Cell", "Recommendation", "build_tuning_report", "cli", "describe", "grid", "main",
           "parse_loads", "reason", "recommend"]

SECTION = "tuning"
MAX_ERROR_PERCENT, P95_FACTOR = 1.0, 2.0
_ESCENARIOS = {"low": "Baja carga", "medium": "Carga media", "high": "Alta carga"}


def parse_loads(text: str) -> dict[str, int]:
    """``"low=2,medium=8,high=20"`` -> ``{"low": 2, ...}`` (argparse type)."""
    try:
        loads = {name.strip(): int(users) for name, _, users in (p.partition("=") for p in text.split(","))}
    except ValueError:
        loads = {}
    if not loads or "" in loads or min(loads.values()) < 1:
        raise argparse.ArgumentTypeError(f"expected name=users pairs, users >= 1, as low=2; got {text!r}")
    return loads


def grid(sizes: Sequence[int], timeouts: Sequence[float], policy: str) -> list[Variant]:
    """The individual baseline, then one variant per (BATCH_SIZE, BATCH_TIMEOUT)."""
    return [INDIVIDUAL] + [batch_variant(f"b{size}-t{timeout:g}", size, timeout, policy)
                           for size in sizes for timeout in timeouts]


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
        return config.parse_bool(self.env.get("USE_BATCH_PROCESSING", "false"))


def cell(records: Sequence[RunRecord], variant: str, users: int) -> Cell | None:
    if not (runs := select(records, variant=variant, users=users)):
        return None
    return Cell(variant, runs[0].env, *(spread_of(runs, get) for get in (
        lambda r: r.stats.requests_per_s, lambda r: r.stats.p50_ms, lambda r: r.stats.p95_ms,
        lambda r: r.stats.error_percent, lambda r: r.mean_batch)))


@dataclass(frozen=True)
class Recommendation:
    """The pick for one load level, and by which rule."""

    level: str
    users: int
    cell: Cell | None
    limit_ms: float | None
    baseline: Cell | None
    rule: str  #: ``within`` (fastest within the limits), ``lowest-p95`` (none within) or ``none``
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
    if within:
        best = max(within, key=lambda c: (c.rps.median, -c.p95.median))  # type: ignore[union-attr]
        rule = "within"
    elif healthy:
        best, rule = min(healthy, key=lambda c: c.p95.median), "lowest-p95"  # type: ignore[union-attr]
    else:
        best, rule = None, "none"
    return Recommendation(level, users, best, limit, baseline, rule, p95_limit_ms is not None)


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
    text = words[rec.rule].format(limit=fmt(rec.limit_ms, 0), how=how, errors=f"{MAX_ERROR_PERCENT:g}")
    return text + (words["slower"] if rec.individual_faster else "")


def _ratio(c: Cell | None, baseline: Cell | None) -> str:
    return ratio(c.rps if c else None, baseline.rps if baseline else None)


def describe(rec: Recommendation) -> str:
    """One console line per load level."""
    if (c := rec.cell) is None:
        return f"{rec.level} load ({rec.users} users): no recommendation ({reason(rec)})"
    return (f"{rec.level} load ({rec.users} users): BATCH_SIZE={c.env.get('BATCH_SIZE')} "
            f"BATCH_TIMEOUT={c.env.get('BATCH_TIMEOUT')} -> {fmt(median(c.rps), 2)} requests/s, "
            f"p95 {fmt(median(c.p95), 0)} ms (individual {_ratio(c, rec.baseline)}); {reason(rec)}")


def build_tuning_report(run_dir: Path, out: Path, p95_limit_ms: float | None = None) -> list[Recommendation]:
    """Write ``tuning.csv`` and the tuning section of ``out``; the recommendations."""
    plan, records, variants = load_plan(run_dir)
    loads: dict[str, int] = plan.get("loads") or {str(u): u for u in sorted({r.users for r in records})}
    limit = p95_limit_ms if p95_limit_ms is not None else plan.get("p95_limit_ms")
    write_runs_csv(records, out.parent / ASSETS / "tuning.csv")
    recs = [recommend(level, users, [c for v in variants if (c := cell(records, v, users))], limit)
            for level, users in loads.items()]
    rows = []
    for r in recs:
        c = r.cell or Cell("", {}, None, None, None, None, None)
        rows.append([_ESCENARIOS.get(r.level, r.level), str(r.users), c.env.get("BATCH_SIZE", "—"),
                     c.env.get("BATCH_TIMEOUT", "—"), fmt_spread(c.rps, 2), _ratio(r.cell, r.baseline),
                     fmt_spread(c.p50, 0), fmt_spread(c.p95, 0), fmt_spread(c.batch, 2),
                     fmt_spread(c.errors, 2), reason(r, "es")])

    def entry(c: Cell | None) -> str:
        return "—" if c is None else f"{fmt(median(c.rps), 2)} / {fmt(median(c.p95), 0)}"
    lines = [
        "## Valores recomendados (measured)", "",
        preamble(plan, records, "tune", "tuning.csv") + f" BATCH_POLICY={plan.get('policy', '?')}.", "",
        table(["Escenario", "Usuarios", "BATCH_SIZE", "BATCH_TIMEOUT", "RPS", "Mejora frente a individual",
               "Latencia p50, ms", "Latencia p95, ms", "Tamaño promedio de batch", "Errores, %",
               "Descripción"],
              rows), "",
        "Every configuration: requests per second / latency p95 in ms (medians).", "",
        table(["Configuration", *(f"{level} ({users} users)" for level, users in loads.items())],
              [[v, *(entry(cell(records, v, users)) for users in loads.values())] for v in variants]), "",
        *footer(plan, run_dir)]
    replace_section(out, SECTION, "\n".join(lines))
    return recs


def _arguments(add: Callable[..., Any]) -> None:
    add("--sizes", type=int_list, help="BATCH_SIZE values (2,4,8)")
    add("--timeouts", type=float_list, help="BATCH_TIMEOUT values (0.05,0.5,2.0)")
    add("--loads", type=parse_loads, help="load levels (low=2,medium=8,high=20)")
    add("--policy", default="timeout", choices=config.BATCH_POLICIES, help="BATCH_POLICY (%(default)s)")
    add("--duration", type=float, help="measured seconds per load level (20)")
    add("--p95-limit-ms", type=float, help="p95 limit (default: 2 × best p95)")


def _plan(args: argparse.Namespace) -> Plan:
    loads = tuple(Load(users, args.duration, None, tags)
                  for users, tags in merge_loads((u, level) for level, u in args.loads.items()).items())
    record = {"loads": args.loads, "policy": args.policy, "sizes": args.sizes, "timeouts": args.timeouts,
              "duration_s": args.duration, "p95_limit_ms": args.p95_limit_ms}
    def report(run_dir: Path, out: Path) -> list[str]:
        return [describe(r) for r in build_tuning_report(run_dir, out, args.p95_limit_ms)]
    sessions = alternate(grid(args.sizes, args.timeouts, args.policy), loads, args.repeats)
    return Plan("tune", sessions, record, report)


cli = PlanCLI("tune", __doc__ or "", _arguments, {
    "repeats": (1, 1), "duration": (3.0, 20.0), "sizes": ([2, 4], [2, 4, 8]),
    "timeouts": ([0.05], [0.05, 0.5, 2.0]),
    "loads": ({"low": 1, "high": 4}, {"low": 2, "medium": 8, "high": 20})}, _plan)
main = cli.main

if __name__ == "__main__":
    raise SystemExit(main())
