"""Measure BATCH_SIZE × BATCH_TIMEOUT under low, medium and high load (``make tune``).

Per load level: the fastest batch configuration with at most 1 % errors and p95 within
``--p95-limit-ms``, by default twice the best p95 at that load (without doubling the tail latency).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import config

from .driver import Load, Plan, PlanCLI, alternate, float_list, int_list, merge_loads
from .report import ASSETS, fmt, footer, median, preamble, ratio, replace_section, spread_cells, table
from .results import Group, Spread, load_plan, write_runs_csv
from .stack import INDIVIDUAL, Variant, batch_variant

SECTION = "tuning"
MAX_ERROR_PERCENT, P95_FACTOR = 1.0, 2.0
_ESCENARIOS = {"low": "Baja carga", "medium": "Carga media", "high": "Alta carga"}


def parse_loads(text: str) -> dict[str, int]:
    try:
        loads = {name.strip(): int(users) for name, _, users in (p.partition("=") for p in text.split(","))}
    except ValueError:
        loads = {}
    if not loads or "" in loads or min(loads.values()) < 1:
        raise argparse.ArgumentTypeError(f"expected name=users pairs, users >= 1, as low=2; got {text!r}")
    return loads


def grid(sizes: Sequence[int], timeouts: Sequence[float], policy: str) -> list[Variant]:
    return [INDIVIDUAL] + [batch_variant(f"b{size}-t{timeout:g}", size, timeout, policy)
                           for size in sizes for timeout in timeouts]


#: The summary table's measures: RPS, its ratio to individual mode, then the rest.
RPS = (("RPS", lambda r: r.stats.requests_per_s, 2),)
MEASURES = (
    ("Latencia p50, ms", lambda r: r.stats.p50_ms, 0), ("Latencia p95, ms", lambda r: r.stats.p95_ms, 0),
    ("Tamaño promedio de batch", lambda r: r.mean_batch, 2),
    ("Errores, %", lambda r: r.stats.error_percent, 2))


def _is_batch(cell: Group) -> bool:
    return config.parse_bool(cell.env.get("USE_BATCH_PROCESSING", "false"))


def _errors(cell: Group) -> Spread | None:
    return cell.of(lambda r: r.stats.error_percent)


@dataclass(frozen=True)
class Recommendation:
    """The pick for one load level, and by which rule."""
    level: str
    users: int
    cell: Group | None
    limit_ms: float | None
    baseline: Group | None
    rule: str  #: ``within`` (fastest within the limits), ``lowest-p95`` (none within) or ``none``
    limit_given: bool = False

    @property
    def individual_faster(self) -> bool:
        b, c = self.baseline, self.cell
        return bool(b and c and b.rps and c.rps and b.rps.median > c.rps.median)


def recommend(level: str, users: int, cells: Sequence[Group],
              p95_limit_ms: float | None = None) -> Recommendation:
    baseline = next((c for c in cells if not _is_batch(c)), None)
    p95s = [p95.median for c in cells if (p95 := c.p95) is not None]
    limit = p95_limit_ms if p95_limit_ms is not None else (P95_FACTOR * min(p95s) if p95s else None)
    healthy = [c for c in cells if _is_batch(c) and c.rps is not None and c.p95 is not None
               and ((errors := _errors(c)) is None or errors.median <= MAX_ERROR_PERCENT)]
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
    words = _REASONS[lang]
    how = words["given"] if rec.limit_given else words["factor"].format(factor=f"{P95_FACTOR:g}")
    text = words[rec.rule].format(limit=fmt(rec.limit_ms, 0), how=how, errors=f"{MAX_ERROR_PERCENT:g}")
    return text + (words["slower"] if rec.individual_faster else "")


def _ratio(c: Group | None, baseline: Group | None) -> str:
    return ratio(c.rps if c else None, baseline.rps if baseline else None)


def describe(rec: Recommendation) -> str:
    if (c := rec.cell) is None:
        return f"{rec.level} load ({rec.users} users): no recommendation ({reason(rec)})"
    return (f"{rec.level} load ({rec.users} users): BATCH_SIZE={c.env.get('BATCH_SIZE')} "
            f"BATCH_TIMEOUT={c.env.get('BATCH_TIMEOUT')} -> {fmt(median(c.rps), 2)} requests/s, "
            f"p95 {fmt(median(c.p95), 0)} ms (individual {_ratio(c, rec.baseline)}); {reason(rec)}")


def build_tuning_report(run_dir: Path, out: Path, p95_limit_ms: float | None = None) -> list[Recommendation]:
    plan, records, variants = load_plan(run_dir)
    loads: dict[str, int] = plan.get("loads") or {str(u): u for u in sorted({r.users for r in records})}
    limit = p95_limit_ms if p95_limit_ms is not None else plan.get("p95_limit_ms")
    write_runs_csv(records, out.parent / ASSETS / "tuning.csv")
    cells = Group.by_variant(records, variants)
    recs = [recommend(level, users, [c for v in variants if (c := cells.get(v, {}).get(users))], limit)
            for level, users in loads.items()]
    rows = []
    for r in recs:
        env, runs = (r.cell.env, r.cell.runs) if r.cell else ({}, [])
        rows.append([_ESCENARIOS.get(r.level, r.level), str(r.users), env.get("BATCH_SIZE", "—"),
                     env.get("BATCH_TIMEOUT", "—"), *spread_cells(runs, RPS), _ratio(r.cell, r.baseline),
                     *spread_cells(runs, MEASURES), reason(r, "es")])

    def entry(c: Group | None) -> str:
        return "—" if c is None else f"{fmt(median(c.rps), 2)} / {fmt(median(c.p95), 0)}"
    lines = [
        "## Valores recomendados (measured)", "",
        preamble(plan, records, "tune", "tuning.csv") + f" BATCH_POLICY={plan.get('policy', '?')}.", "",
        table(["Escenario", "Usuarios", "BATCH_SIZE", "BATCH_TIMEOUT", "RPS", "Mejora frente a individual",
               *(m[0] for m in MEASURES), "Descripción"], rows), "",
        "Every configuration: requests per second / latency p95 in ms (medians).", "",
        table(["Configuration", *(f"{level} ({users} users)" for level, users in loads.items())],
              [[v, *(entry(cells.get(v, {}).get(users)) for users in loads.values())] for v in variants]), "",
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
