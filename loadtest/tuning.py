"""Turn a tuning run (BATCH_SIZE × BATCH_TIMEOUT under several loads) into recommendations.

Per load level the recommendation is the batch configuration with the highest
throughput among those whose p95 latency stays within a limit and whose error
rate is at most 1 %. The limit is ``--p95-limit-ms`` when given, else twice
the lowest p95 any configuration (the individual baseline included) reached at
that load: "as fast as possible without more than doubling the tail latency".
The measured table replaces the guide's "Valores recomendados" in its own
section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .ceiling import read_benchmark
from .markdown import fmt, fmt_spread, replace_section, table
from .report import ASSETS, PLAN_JSON, write_runs_csv
from .results import RunRecord, Spread, load_runs, select, spread

__all__ = [
    "MAX_ERROR_PERCENT",
    "SECTION",
    "Cell",
    "Recommendation",
    "build_tuning_report",
    "cells",
    "describe",
    "recommend",
]

SECTION = "tuning"
#: Configurations failing more requests than this are never recommended.
MAX_ERROR_PERCENT = 1.0
#: Default p95 limit, as a multiple of the best p95 at that load.
P95_FACTOR = 2.0
_LEVEL_NAMES = {"low": "Baja carga", "medium": "Carga media", "high": "Alta carga"}


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


@dataclass(frozen=True)
class Recommendation:
    """The pick for one load level, and why."""

    level: str
    users: int
    cell: Cell | None
    limit_ms: float | None
    baseline: Cell | None
    reason: str


def _cell(records: Sequence[RunRecord], variant: str, users: int) -> Cell | None:
    runs = select(records, variant=variant, users=users)
    if not runs:
        return None

    def errors(r: RunRecord) -> float | None:
        rate = r.stats.error_rate
        return None if rate is None else 100.0 * rate

    return Cell(
        variant,
        runs[0].env,
        users,
        spread(r.stats.requests_per_s for r in runs),
        spread(r.stats.p50_ms for r in runs),
        spread(r.stats.p95_ms for r in runs),
        spread(errors(r) for r in runs),
        spread(r.mean_batch for r in runs),
    )


def cells(records: Sequence[RunRecord], variants: Sequence[str], users: int) -> list[Cell]:
    """Every variant's cell at one load."""
    found = (_cell(records, v, users) for v in variants)
    return [c for c in found if c is not None]


def recommend(
    level: str, users: int, level_cells: Sequence[Cell], p95_limit_ms: float | None = None
) -> Recommendation:
    """Highest median throughput among batch cells within the p95 limit and the error budget."""
    baseline = next((c for c in level_cells if not c.is_batch), None)
    p95s = [c.p95.median for c in level_cells if c.p95 is not None]
    limit = p95_limit_ms if p95_limit_ms is not None else (P95_FACTOR * min(p95s) if p95s else None)
    batch = [c for c in level_cells if c.is_batch and c.rps is not None and c.p95 is not None]
    healthy = [c for c in batch if c.errors is None or c.errors.median <= MAX_ERROR_PERCENT]
    within = [c for c in healthy if limit is None or c.p95.median <= limit]  # type: ignore[union-attr]
    if within:
        best = max(within, key=lambda c: (c.rps.median, -c.p95.median))  # type: ignore[union-attr]
        how = "given" if p95_limit_ms is not None else f"{P95_FACTOR:g} × the best p95 at this load"
        reason = f"highest throughput with p95 ≤ {limit:.0f} ms ({how}) and ≤ {MAX_ERROR_PERCENT:g} % errors"
    elif healthy:
        best = min(healthy, key=lambda c: c.p95.median)  # type: ignore[union-attr]
        reason = f"no configuration kept p95 ≤ {limit:.0f} ms; this one had the lowest p95"
    else:
        return Recommendation(
            level, users, None, limit, baseline, "no batch configuration ran without errors"
        )
    if baseline and baseline.rps and best.rps and baseline.rps.median > best.rps.median:
        reason += "; individual mode (USE_BATCH_PROCESSING=false) is faster at this load"
    return Recommendation(level, users, best, limit, baseline, reason)


def _ratio(cell: Cell | None, baseline: Cell | None) -> str:
    if not cell or not baseline or not cell.rps or not baseline.rps or baseline.rps.median <= 0:
        return "—"
    return f"×{cell.rps.median / baseline.rps.median:.2f}"


def build_tuning_report(run_dir: Path, out: Path, p95_limit_ms: float | None = None) -> list[Recommendation]:
    """Write ``tuning.csv`` and the tuning section of ``out``; return the recommendations."""
    plan = json.loads((run_dir / PLAN_JSON).read_text())
    records = load_runs(run_dir)
    if not records:
        raise ValueError(f"no measured runs under {run_dir / 'runs'}: nothing to report")
    variants = [v["name"] for v in plan.get("variants") or []] or sorted({r.variant for r in records})
    loads: dict[str, int] = plan.get("loads") or {str(u): u for u in sorted({r.users for r in records})}
    limit = p95_limit_ms if p95_limit_ms is not None else plan.get("p95_limit_ms")
    write_runs_csv(records, out.parent / ASSETS / "tuning.csv", read_benchmark(run_dir / "benchmark.json"))

    recs = [recommend(level, users, cells(records, variants, users), limit) for level, users in loads.items()]
    rec_rows = []
    for r in recs:
        c = r.cell
        env = c.env if c else {}
        rec_rows.append(
            [
                _LEVEL_NAMES.get(r.level, r.level),
                str(r.users),
                env.get("BATCH_SIZE", "—"),
                env.get("BATCH_TIMEOUT", "—"),
                fmt_spread(c.rps if c else None, 2),
                _ratio(c, r.baseline),
                fmt_spread(c.p50 if c else None, 0),
                fmt_spread(c.p95 if c else None, 0),
                fmt_spread(c.batch if c else None, 2),
                fmt_spread(c.errors if c else None, 2),
                r.reason,
            ]
        )
    grid_rows = []
    for v in variants:
        row = [v]
        for _level, users in loads.items():
            c = _cell(records, v, users)
            row.append(
                "—"
                if c is None
                else f"{fmt(c.rps.median if c.rps else None, 2)} / {fmt(c.p95.median if c.p95 else None, 0)}"
            )
        grid_rows.append(row)
    policy = plan.get("policy", "?")
    lines = [
        "## Valores recomendados (measured)",
        "",
        f"Generated by `{plan.get('command', 'python -m loadtest.tune')}` ({plan.get('started_at', '?')} to "
        f"{plan.get('finished_at', '?')}), BATCH_POLICY={policy}. Each configuration ran on a freshly "
        f"started stack after a dropped warm-up, with closed-loop users; values are medians over "
        f"{max(r.repeat for r in records)} repeat(s), (min–max) in brackets, read from the runs' locust CSV "
        f"files (combined in [{ASSETS}/tuning.csv]({ASSETS}/tuning.csv)). These replace the guide's "
        f"unmeasured table.",
        "",
        table(
            [
                "Escenario",
                "Users",
                "BATCH_SIZE",
                "BATCH_TIMEOUT",
                "Requests per second",
                "Throughput against individual",
                "Latency p50, ms",
                "Latency p95, ms",
                "Mean batch size",
                "Errors, %",
                "Descripción",
            ],
            rec_rows,
        ),
        "",
        "Every configuration: requests per second / latency p95 in ms (medians).",
        "",
        table(["Configuration", *(f"{level} ({users} users)" for level, users in loads.items())], grid_rows),
        "",
        f"Raw files: `{run_dir}`.",
    ]
    errors = plan.get("errors") or []
    if errors:
        lines += ["", "Problems during the run:", "", *(f"- {e}" for e in errors)]
    replace_section(out, SECTION, "\n".join(lines))
    return recs


def describe(rec: Recommendation) -> str:
    """One console line per load level."""
    if rec.cell is None:
        return f"{rec.level} load ({rec.users} users): no recommendation ({rec.reason})"
    env = rec.cell.env
    rps = rec.cell.rps.median if rec.cell.rps else float("nan")
    p95 = rec.cell.p95.median if rec.cell.p95 else float("nan")
    return (
        f"{rec.level} load ({rec.users} users): BATCH_SIZE={env.get('BATCH_SIZE')} "
        f"BATCH_TIMEOUT={env.get('BATCH_TIMEOUT')} -> {rps:.2f} requests/s, p95 {p95:.0f} ms "
        f"(individual {_ratio(rec.cell, rec.baseline)}); {rec.reason}"
    )
