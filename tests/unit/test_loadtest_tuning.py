"""loadtest.tuning: the p95-constrained pick per load level and the measured "Valores recomendados"."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.results import Spread
from loadtest.tuning import Cell, build_tuning_report, recommend
from tests.unit.test_loadtest_report import table_row, write_run


def cell(name: str, rps: float, p95: float, errors: float = 0.0, batch: bool = True) -> Cell:
    env = {
        "USE_BATCH_PROCESSING": "true" if batch else "false",
        "BATCH_SIZE": name[1:2],
        "BATCH_TIMEOUT": "0.5",
    }
    one = lambda v: Spread(v, v, v, 1)  # noqa: E731
    return Cell(name, env, 8, one(rps), one(p95 / 2), one(p95), one(errors), one(2.0))


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
    assert "lowest p95" in rec.reason and "individual mode" in rec.reason
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
    assert table_row(text, "Alta carga")[:6] == ["Alta carga", "20", "2", "0.5", "20.00", "×2.00"]
    assert "| b4-t0.5 | 4.00 / 400 | 40.00 / 400 |" in text
    assert (tmp_path / "benchmarks" / "tuning.csv").read_text().count("\n") == 7
