"""loadtest.tune: the grid, the load levels, the session order and the p95-constrained recommendation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from loadtest.results import Spread
from loadtest.tune import (
    Cell,
    build_sessions,
    build_tuning_report,
    describe,
    grid,
    parse_args,
    parse_loads,
    reason,
    recommend,
)
from tests.unit.test_loadtest_report import table_row, write_run


def test_parse_loads() -> None:
    assert parse_loads("low=2,medium=8,high=20") == {"low": 2, "medium": 8, "high": 20}
    for bad in ("low", "low=x", "=3", "low=0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_loads(bad)


def test_grid_is_sizes_times_timeouts_after_the_baseline() -> None:
    variants = grid([2, 8], [0.05, 2.0], "adaptive")
    assert [v.name for v in variants] == ["individual", "b2-t0.05", "b2-t2", "b8-t0.05", "b8-t2"]
    assert variants[2].env == {
        "USE_BATCH_PROCESSING": "true",
        "BATCH_SIZE": "2",
        "BATCH_TIMEOUT": "2",
        "BATCH_POLICY": "adaptive",
    }
    assert [v.name for v in grid([4], [0.5], "timeout", baseline=False)] == ["b4-t0.5"]


def test_sessions_measure_every_level_per_stack() -> None:
    sessions = build_sessions(grid([4], [0.5], "timeout"), {"high": 20, "low": 2, "also-low": 2}, 15.0, 2)
    assert [(s.variant.name, s.repeat) for s in sessions] == [
        ("individual", 1),
        ("b4-t0.5", 1),
        ("individual", 2),
        ("b4-t0.5", 2),
    ]
    assert [(ld.users, ld.roles, ld.duration_s) for ld in sessions[0].loads] == [
        (2, ("low", "also-low"), 15.0),
        (20, ("high",), 15.0),
    ]


def test_defaults_and_quick() -> None:
    full = parse_args([])
    assert (full.sizes, full.timeouts, full.loads) == (
        [2, 4, 8],
        [0.05, 0.5, 2.0],
        {"low": 2, "medium": 8, "high": 20},
    )
    quick = parse_args(["--quick", "--sizes", "4"])
    assert quick.sizes == [4] and quick.duration == 3.0


def cell(name: str, rps: float, p95: float, errors: float = 0.0, batch: bool = True) -> Cell:
    env = {
        "USE_BATCH_PROCESSING": "true" if batch else "false",
        "BATCH_SIZE": name[1:2],
        "BATCH_TIMEOUT": "0.5",
    }
    one = lambda v: Spread(v, v, v, 1)  # noqa: E731
    return Cell(name, env, one(rps), one(p95 / 2), one(p95), one(errors), one(2.0))


def test_fastest_within_twice_the_best_p95() -> None:
    cells = [
        cell("individual", 5.0, 100.0, batch=False),
        cell("b2", 8.0, 190.0),
        cell("b4", 12.0, 250.0),
        cell("b8", 9.0, 150.0),
    ]
    rec = recommend("medium", 8, cells)
    assert rec.cell is not None and rec.cell.variant == "b8"  # b4 is faster but over 2 × 100 ms
    assert rec.limit_ms == 200.0 and rec.baseline is cells[0]
    assert recommend("medium", 8, cells, p95_limit_ms=300.0).cell.variant == "b4"  # type: ignore[union-attr]


def test_errors_disqualify_and_nothing_within_the_limit_falls_back_to_lowest_p95() -> None:
    cells = [
        cell("individual", 7.0, 10.0, batch=False),
        cell("b2", 8.0, 190.0, errors=5.0),
        cell("b4", 6.0, 90.0),
    ]
    rec = recommend("low", 2, cells)
    assert rec.cell is not None and rec.cell.variant == "b4"
    assert rec.rule == "lowest-p95" and "lowest p95" in reason(rec) and "individual mode" in reason(rec)
    assert reason(rec, "es").startswith("ninguna configuración mantuvo p95 ≤ 20 ms")
    assert recommend("low", 2, [cell("b2", 8.0, 190.0, errors=5.0)]).cell is None


def test_report_replaces_the_tuning_section(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    envs: dict[str, dict[str, str]] = {"individual": {"USE_BATCH_PROCESSING": "false"}}
    for size in (2, 4):
        envs[f"b{size}-t0.5"] = {
            "USE_BATCH_PROCESSING": "true",
            "BATCH_SIZE": str(size),
            "BATCH_TIMEOUT": "0.5",
        }
    variants = [{"name": name, "env": env} for name, env in envs.items()]
    (root / "plan.json").write_text(
        json.dumps(
            {
                "kind": "tune",
                "variants": variants,
                "policy": "timeout",
                "loads": {"low": 2, "high": 20},
                "command": "python -m loadtest.tune",
            }
        )
    )
    for name, env in envs.items():
        size = int(env.get("BATCH_SIZE", "1"))
        for users in (2, 20):
            write_run(
                root,
                name,
                users,
                1,
                rps=users * size / 2,
                p50=50 * size,
                p95=100 * size,
                p99=120 * size,
                env=env,
                batches=[(size, 100, 100 * 20.0 * size)],
            )
    out = tmp_path / "benchmarks.md"
    out.write_text("# B\n\n<!-- BEGIN tuning -->\nold\n<!-- END tuning -->\n\nafter\n")
    recs = build_tuning_report(root, out)
    text = out.read_text()
    assert text.endswith("<!-- END tuning -->\n\nafter\n") and "old" not in text
    # limit 2 × 100 ms: b2 (p95 200) qualifies, b4 (400) does not
    assert [r.cell.variant for r in recs] == ["b2-t0.5", "b2-t0.5"]  # type: ignore[union-attr]
    assert "| Escenario | Usuarios | BATCH_SIZE | BATCH_TIMEOUT | RPS | Mejora frente a individual |" in text
    row = table_row(text, "Alta carga")
    assert row[:6] == ["Alta carga", "20", "2", "0.5", "20.00", "×2.00"]
    assert row[-1] == "mayor throughput con p95 ≤ 200 ms (2 × el mejor p95 con esta carga) y ≤ 1 % de errores"
    assert "| b4-t0.5 | 4.00 / 400 | 40.00 / 400 |" in text
    assert (tmp_path / "benchmarks" / "tuning.csv").read_text().count("\n") == 7


def test_console_line_names_the_settings() -> None:
    rec = recommend("high", 20, [cell("individual", 5.0, 100.0, batch=False), cell("b4", 12.0, 150.0)])
    assert describe(rec).startswith("high load (20 users): BATCH_SIZE=4 BATCH_TIMEOUT=0.5 -> 12.00 "
                                    "requests/s, p95 150 ms (individual ×2.40); highest throughput")
