"""``python -m loadtest.compare --quick`` against the real stack: the report's numbers are the ones in
the run's CSV files and nothing is left running (speed is never asserted). Every stack has a Celery
queue of its own, so sharing the test Redis DB is safe (``--keep-db``).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.unit.test_loadtest_report import table_row
from workers.metrics import BATCH_SIZE_METRIC

ROOT = Path(__file__).resolve().parents[2]


def aggregated(path: Path) -> dict[str, str]:
    with open(path, newline="") as fh:
        return next(row for row in csv.DictReader(fh) if row["Name"] == "Aggregated")


@pytest.mark.timeout(240)
def test_quick_compare_reports_the_numbers_it_measured(redis_url: str, tmp_path: Path) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "docs" / "benchmarks.md"
    out.parent.mkdir()
    out.write_text("# Benchmarks\n\n<!-- BEGIN model-benchmark -->\nkept\n<!-- END model-benchmark -->\n")
    cmd = [sys.executable, "-m", "loadtest.compare", "--quick", "--variants", "individual,batch-timeout",
           "--csv-dir", str(run_dir), "--out", str(out),
           "--redis-url", redis_url, "--redis-db-span", "1", "--keep-db"]
    before = {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}  # other fixtures' stacks
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=220)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    left = {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)} - before
    assert not left, f"compare left processes behind: {left}"
    # one progress line per phase on stderr, the throughput ratios with both numbers on stdout
    assert re.search(r"^\[ *1/\d+ \| elapsed \S+ \| ETA \S+\] ", proc.stderr, re.MULTILINE)
    assert "Guide's plan, batch against individual:" in proc.stdout

    text = out.read_text()
    assert "<!-- BEGIN model-benchmark -->\nkept\n<!-- END model-benchmark -->" in text
    section = text[text.index("<!-- BEGIN load-comparison -->"):text.index("<!-- END load-comparison -->")]
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["errors"] == []
    runs = {mode: run_dir / "runs" / f"{variant}-u{plan['seed_users'][mode]:03d}-r1"
            for mode, variant in (("individual", "individual"), ("batch", "batch-timeout"))}
    individual, batch = (aggregated(runs[m] / "locust_final_stats.csv") for m in ("individual", "batch"))
    assert int(individual["Request Count"]) > 0 and int(batch["Request Count"]) > 0
    # the guide's table, in its own words, with the CSV's numbers
    assert "| Métrica | Individual | Batch | Mejora |" in section
    assert table_row(section, "RPS (ML)")[1:3] == [f"{float(individual['Requests/s']):.2f}",
                                               f"{float(batch['Requests/s']):.2f}"]
    assert table_row(section, "Latencia p95, ms")[1:3] == [f"{float(individual['95%']):.0f}",
                                                       f"{float(batch['95%']):.0f}"]
    # the mean batch size is what the worker's own histogram counted
    run = json.loads((runs["batch"] / "run.json").read_text())
    sizes = run["worker_metrics"]["histograms"][BATCH_SIZE_METRIC]
    assert sizes["count"] > 0
    assert table_row(section, "Tamaño promedio de batch")[2] == f"{sizes['sum'] / sizes['count']:.2f}"
    with open(run_dir / "runs" / "individual-u001-r1" / "locust_batches.csv", newline="") as fh:
        assert {row["batch_size"] for row in csv.DictReader(fh)} == {"1"}
    with open(out.parent / "benchmarks" / "runs.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == len(list((run_dir / "runs").iterdir()))
    for name in ("throughput_vs_users.png", "p95_vs_users.png", "batch_size_distribution.png"):
        assert (out.parent / "benchmarks" / name).read_bytes()[:4] == b"\x89PNG"
    assert "Model only (`python -m loadtest.model_benchmark`" in section  # plan["errors"] is empty: it ran
