"""loadtest.tune: the grid, the load levels and the p95-constrained recommendation and its report."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from loadtest.results import Group
from loadtest.tune import build_tuning_report, cli, grid, parse_loads, reason, recommend
from tests.unit.test_loadtest_report import record, table_row, write_runs


def test_load_levels_the_grid_and_options() -> None:
    assert parse_loads("low=2,medium=8,high=20") == {"low": 2, "medium": 8, "high": 20}
    for bad in ("low", "low=x", "=3", "low=0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_loads(bad)
    variants = grid([2, 8], [0.05, 2.0], "adaptive")
    assert [v.name for v in variants] == ["individual", "b2-t0.05", "b2-t2", "b8-t0.05", "b8-t2"]
    assert variants[2].env == {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "2", "BATCH_TIMEOUT": "2",
                               "BATCH_POLICY": "adaptive"}
    full, _ = cli.parse([])
    assert (full.sizes, full.timeouts, full.loads) == ([2, 4, 8], [0.05, 0.5, 2.0],
                                                       {"low": 2, "medium": 8, "high": 20})
    quick, plan = cli.parse(["--quick", "--sizes", "4"])
    assert quick.duration == 3.0 and [s.variant.name for s in plan.sessions] == ["individual", "b4-t0.05"]


def cell(name: str, rps: float, p95: float, errors: float = 0.0, batch: bool = True) -> Group:
    env = {"USE_BATCH_PROCESSING": str(batch).lower(), "BATCH_SIZE": name[1:2], "BATCH_TIMEOUT": "0.5"}
    return Group(name, 8, [record(name, 8, rps=rps, p95=p95, failures=round(errors * rps / 10), env=env)])


def test_fastest_within_twice_the_best_p95_else_the_lowest_p95() -> None:
    cells = [cell("individual", 5.0, 100.0, batch=False), cell("b2", 8.0, 190.0), cell("b4", 12.0, 250.0),
             cell("b8", 9.0, 150.0)]
    rec = recommend("medium", 8, cells)
    assert rec.cell is not None and rec.cell.variant == "b8"  # b4 is faster but over 2 × 100 ms
    assert rec.limit_ms == 200.0 and rec.baseline is cells[0] and rec.rule == "within"
    # errors disqualify, and with nothing within the limit the lowest p95 is the pick
    cells = [cell("individual", 7.0, 10.0, batch=False), cell("b2", 8.0, 190.0, errors=5.0),
             cell("b4", 6.0, 90.0)]
    rec = recommend("low", 2, cells)
    assert rec.cell is not None and rec.cell.variant == "b4"
    assert rec.rule == "lowest-p95" and reason(rec) == (
        "ninguna configuración mantuvo p95 ≤ 20 ms; esta tuvo el menor p95; el modo individual "
        "(USE_BATCH_PROCESSING=false) es más rápido con esta carga")
    none = recommend("low", 2, [cell("b2", 8.0, 190.0, errors=5.0)])
    assert none.cell is None and reason(none) == "ninguna configuración batch funcionó sin errores"


def test_report_replaces_the_tuning_section(tmp_path: Path) -> None:
    envs = {v.name: dict(v.env) for v in grid([2, 4], [0.5], "timeout")}  # individual, b2-t0.5, b4-t0.5
    runs = [record(name, users, rps=users * size / 2, p50=50 * size, p95=100 * size, requests=100, env=env,
                   batches=[(size, 100, 100 * 20.0 * size)])
            for name, env in envs.items() for size in [int(env.get("BATCH_SIZE", "1"))] for users in (2, 20)]
    root = write_runs(tmp_path / "run", runs, variants=[{"name": n, "env": e} for n, e in envs.items()],
                      policy="timeout", loads={"low": 2, "high": 20})
    out = tmp_path / "benchmarks.md"
    out.write_text("# B\n\n<!-- BEGIN tuning -->\nold\n<!-- END tuning -->\n\nafter\n")
    lines = build_tuning_report(root, out)
    text = out.read_text()
    assert text.endswith("<!-- END tuning -->\n\nafter\n") and "old" not in text and lines[0] in text
    assert lines[0].startswith("| Escenario | Usuarios | BATCH_SIZE | BATCH_TIMEOUT | RPS | Mejora frente a ")
    # limit 2 × 100 ms: b2 (p95 200) qualifies, b4 (400) does not
    assert table_row(text, "Baja carga")[:4] == ["Baja carga", "2", "2", "0.5"]
    row = table_row(text, "Alta carga")
    assert row[:6] == ["Alta carga", "20", "2", "0.5", "20.00", "×2.00"]
    assert row[-1] == "mayor throughput con p95 ≤ 200 ms (2 × el mejor p95 con esta carga) y ≤ 1 % de errores"
    assert "| b4-t0.5 | 4.00 / 400 | 40.00 / 400 |" in text
    assert (tmp_path / "benchmarks" / "tuning.csv").read_text().count("\n") == 7
