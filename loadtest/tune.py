"""Measure BATCH_SIZE × BATCH_TIMEOUT under low, medium and high load (``make tune``).

Per load level: the fastest batch configuration with at most 1 % errors and p95 within twice the
best p95 at that load (without doubling the tail latency).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import config

from .driver import Load, Plan, PlanCLI, alternate, float_list, int_list, merge_loads
from .report import fmt, median, publish, ratio, spread_cells, table
from .results import Group, load_plan
from .stack import INDIVIDUAL, Variant, batch_variant

SECTION = "tuning"
MAX_ERROR_PERCENT, P95_FACTOR = 1.0, 2.0
_ESCENARIOS = {"low": "Baja carga", "medium": "Carga media", "high": "Alta carga"}


def parse_loads(text: str) -> dict[str, int]:
    pairs = [(name.strip(), users.strip()) for name, _, users in (p.partition("=") for p in text.split(","))]
    if not all(name and users.isdigit() and int(users) >= 1 for name, users in pairs):
        raise argparse.ArgumentTypeError(f"expected name=users pairs, users >= 1, as low=2; got {text!r}")
    return {name: int(users) for name, users in pairs}


def grid(sizes: Sequence[int], timeouts: Sequence[float], policy: str) -> list[Variant]:
    return [INDIVIDUAL] + [batch_variant(f"b{size}-t{timeout:g}", size, timeout, policy)
                           for size in sizes for timeout in timeouts]


#: The summary table's measures: RPS, its ratio to individual mode, then the rest.
RPS = (("RPS", lambda r: r.stats.requests_per_s, 2),)
MEASURES = (
    ("Latencia p50, ms", lambda r: r.stats.p50_ms, 0), ("Latencia p95, ms", lambda r: r.stats.p95_ms, 0),
    ("Tamaño promedio de batch", lambda r: r.mean_batch, 2),
    ("Errores, %", lambda r: r.stats.error_percent, 2))


@dataclass(frozen=True)
class Recommendation:
    """The pick for one load level, and by which rule."""
    level: str
    users: int
    cell: Group | None
    limit_ms: float | None
    baseline: Group | None
    rule: str  #: ``within`` (fastest within the limits), ``lowest-p95`` (none within) or ``none``


def recommend(level: str, users: int, cells: Sequence[Group]) -> Recommendation:
    baseline = next((c for c in cells if c.runs[0].mode != "batch"), None)
    p95s = [p95.median for c in cells if (p95 := c.p95) is not None]
    limit = P95_FACTOR * min(p95s) if p95s else None
    healthy = [c for c in cells if c.runs[0].mode == "batch" and c.rps is not None and c.p95 is not None
               and (median(c.of(lambda r: r.stats.error_percent)) or 0.0) <= MAX_ERROR_PERCENT]
    within = [c for c in healthy if limit is None or c.p95.median <= limit]  # type: ignore[union-attr]
    if within:
        best = max(within, key=lambda c: (c.rps.median, -c.p95.median))  # type: ignore[union-attr]
        return Recommendation(level, users, best, limit, baseline, "within")
    lowest = min(healthy, key=lambda c: c.p95.median, default=None)  # type: ignore[union-attr]
    return Recommendation(level, users, lowest, limit, baseline, "lowest-p95" if lowest else "none")


#: In the guide's Spanish: the table's Descripción and the console's reason.
_REASONS = {"within": "mayor throughput con p95 ≤ {limit} ms ({factor} × el mejor p95 con esta carga) y "
                      "≤ {errors} % de errores",
            "lowest-p95": "ninguna configuración mantuvo p95 ≤ {limit} ms; esta tuvo el menor p95",
            "none": "ninguna configuración batch funcionó sin errores"}


def reason(rec: Recommendation) -> str:
    text = _REASONS[rec.rule].format(limit=fmt(rec.limit_ms, 0), factor=f"{P95_FACTOR:g}",
                                     errors=f"{MAX_ERROR_PERCENT:g}")
    base, cell = rec.baseline, rec.cell
    if base and cell and base.rps and cell.rps and base.rps.median > cell.rps.median:
        text += "; el modo individual (USE_BATCH_PROCESSING=false) es más rápido con esta carga"
    return text


def build_tuning_report(run_dir: Path, out: Path) -> list[str]:
    """Write the section and its CSV; the console lines: the recommendations' table."""
    plan, records, variants = load_plan(run_dir)
    loads: dict[str, int] = plan.get("loads") or {str(u): u for u in sorted({r.users for r in records})}
    cells = Group.by_variant(records, variants)
    recs = [recommend(level, users, [c for v in variants if (c := cells.get(v, {}).get(users))])
            for level, users in loads.items()]
    rows = []
    for r in recs:
        env, runs = (r.cell.runs[0].env, r.cell.runs) if r.cell else ({}, [])
        against = ratio(r.cell.rps if r.cell else None, r.baseline.rps if r.baseline else None)
        rows.append([_ESCENARIOS.get(r.level, r.level), str(r.users), env.get("BATCH_SIZE", "—"),
                     env.get("BATCH_TIMEOUT", "—"), *spread_cells(runs, RPS), against,
                     *spread_cells(runs, MEASURES), reason(r)])

    def entry(c: Group | None) -> str:
        return "—" if c is None else f"{fmt(median(c.rps), 2)} / {fmt(median(c.p95), 0)}"
    recommended = table(["Escenario", "Usuarios", "BATCH_SIZE", "BATCH_TIMEOUT", "RPS",
                         "Mejora frente a individual", *(m[0] for m in MEASURES), "Descripción"], rows)
    lines = [
        f" BATCH_POLICY={plan.get('policy', '?')}.", "",
        recommended, "",
        "Every configuration: requests per second / latency p95 in ms (medians).", "",
        table(["Configuration", *(f"{level} ({users} users)" for level, users in loads.items())],
              [[v, *(entry(cells.get(v, {}).get(users)) for users in loads.values())] for v in variants]), ""]
    publish(out, SECTION, run_dir, plan, records, "tuning.csv", "## Valores recomendados (measured)", lines)
    return [recommended]


def _arguments(add: Callable[..., Any]) -> None:
    add("--sizes", type=int_list, help="BATCH_SIZE values (2,4,8)")
    add("--timeouts", type=float_list, help="BATCH_TIMEOUT values (0.05,0.5,2.0)")
    add("--loads", type=parse_loads, help="load levels (low=2,medium=8,high=20)")
    add("--policy", default="timeout", choices=config.BATCH_POLICIES, help="BATCH_POLICY (%(default)s)")
    add("--duration", type=float, help="measured seconds per load level (20)")


def _plan(args: argparse.Namespace) -> Plan:
    loads = tuple(Load(users, args.duration, None, tags)
                  for users, tags in merge_loads((u, level) for level, u in args.loads.items()).items())
    record = {"loads": args.loads, "policy": args.policy, "sizes": args.sizes, "timeouts": args.timeouts,
              "duration_s": args.duration}
    sessions = alternate(grid(args.sizes, args.timeouts, args.policy), loads, args.repeats)
    return Plan("tune", sessions, record, build_tuning_report)


cli = PlanCLI("tune", __doc__ or "", _arguments, {
    "repeats": (1, 1), "duration": (3.0, 20.0), "sizes": ([2, 4], [2, 4, 8]),
    "timeouts": ([0.05], [0.05, 0.5, 2.0]),
    "loads": ({"low": 1, "high": 4}, {"low": 2, "medium": 8, "high": 20})}, _plan)
main = cli.main

if __name__ == "__main__":
    raise SystemExit(main())
