"""loadtest.report: the load-comparison section from a run folder's files alone, the model-only ceiling,
marked sections and numbers; and the run-folder writer the other report tests share."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any

import pytest

from loadtest import report
from loadtest.results import BatchRow, LocustStats, RunRecord, Spread

STATS_HEADER = ["Type", "Name", "Request Count", "Failure Count", "Requests/s", "Failures/s",
                "Average Response Time", "50%", "95%", "99%", "Max Response Time"]
BATCH = {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "4", "BATCH_TIMEOUT": "2", "BATCH_POLICY": "timeout"}
VARIANTS = [{"name": "individual", "env": {"USE_BATCH_PROCESSING": "false"}},
            {"name": "batch-timeout", "env": BATCH}]


def record(variant: str, users: int, repeat: int = 1, *, rps: float, p50: float = 100.0, p95: float = 200.0,
           p99: float | None = None, requests: int | None = None, failures: int = 0,
           batches: Sequence[tuple[int, int, float]] = (), roles: Sequence[str] = ("sweep",),
           window_s: float = 10.0, **meta: Any) -> RunRecord:
    """A run as the runner leaves it: ``requests`` (default: rps × window) over a ``window_s`` window."""
    requests = round(rps * window_s) if requests is None else requests
    env = next((v["env"] for v in VARIANTS if v["name"] == variant), {})
    meta = {"variant": variant, "mode": "batch" if variant.startswith("b") else "individual", "users": users,
            "repeat": repeat, "roles": list(roles), "env": env, "cpu_window_s": window_s, **meta}
    stats = LocustStats(requests, failures, rps, failures / window_s, p50 + 1.5, p50, p95, p99 or p95,
                        p99 or p95)
    return RunRecord(Path(f"{variant}-u{users:03d}-r{repeat}"), meta, stats, [BatchRow(*b) for b in batches])


def write_runs(root: Path, records: Sequence[RunRecord], **plan: Any) -> Path:
    """``plan.json`` and one folder per run, with locust's Aggregated row and the batch tally."""
    for r in records:
        folder = root / "runs" / r.path.name
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps(r.meta))
        with open(folder / "locust_stats.csv", "w", newline="") as fh:  # the fields in locust's order
            csv.writer(fh).writerows([STATS_HEADER, ["", "Aggregated", *astuple(r.stats)]])
        with open(folder / "locust_batches.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([["batch_size", "requests", "inference_ms_sum"],
                                      *([b.batch_size, b.requests, b.inference_ms_sum] for b in r.batches)])
    plan = {"command": "python -m loadtest.compare --repeats 2", "started_at": "t0", "finished_at": "t1",
            "warmup_s": 10, "machine": {"cpu": "Test CPU", "logical_cpus": 2}, "errors": [], **plan}
    root.mkdir(parents=True, exist_ok=True)
    (root / "plan.json").write_text(json.dumps(plan))
    return root


def table_row(text: str, metric: str) -> list[str]:
    line = next((line for line in text.splitlines() if line.startswith(f"| {metric} |")), None)
    assert line is not None, f"no row {metric!r} in:\n{text}"
    return [cell.strip() for cell in line.strip("|").split("|")]


def section(path: Path, name: str = report.SECTION) -> str:
    text = path.read_text()
    return text[text.index(f"<!-- BEGIN {name} -->"):text.index(f"<!-- END {name} -->")]


def build_beside(build: Callable[[Path, Path], Any], run_dir: Path, name: str) -> tuple[Any, str]:
    """``build``'s return and section ``name``, built into a docs file whose other section it keeps."""
    out, other = run_dir.parent / "docs" / "benchmarks.md", "<!-- BEGIN other -->\nkept\n<!-- END other -->"
    out.parent.mkdir(exist_ok=True)
    out.write_text(f"# Benchmarks\n\n{other}\n")
    returned = build(run_dir, out)
    assert other in out.read_text()
    return returned, section(out, name)


PLAN = {"variants": VARIANTS, "baseline": "individual", "seed_batch": "batch-timeout",
        "seed_users": {"individual": 10, "batch": 20}, "equal_users": 20}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Two repeats of the guide's runs and the equal load."""
    runs = []
    for repeat, (ind, bat) in enumerate([(5.0, 11.0), (7.0, 13.0)], start=1):
        runs += [record("individual", 10, repeat, rps=ind, p50=100 + 10 * repeat, p95=260, p99=300,
                        requests=100, roles=("seed",), batches=[(1, 100, 4000.0)]),
                 record("individual", 20, repeat, rps=ind + 0.5, p50=200, p95=400, p99=500, requests=100,
                        roles=("equal", "sweep"), batches=[(1, 100, 4000.0)]),
                 record("batch-timeout", 20, repeat, rps=bat, p50=150, p95=380, p99=420, requests=200,
                        failures=2, roles=("seed", "equal", "sweep"),
                        batches=[(4, 160, 160 * 60.0), (2, 40, 40 * 50.0)])]
    return write_runs(tmp_path / "run", runs, **PLAN)


def forward(size: int, median_ms: float, efficiency: float | None) -> dict[str, Any]:
    return {"batch_size": size, "median_ms": median_ms, "per_image_ms": median_ms / size,
            "images_per_s": size * 1000 / median_ms, "efficiency": efficiency}


BENCHMARK = {"machine": {"device": "cpu", "threads": 2}, "model": "efficientnet_lite0",
             "weights": "/very/long/path/efficientnet-lite0.pth", "repeats": 20,
             "preprocess": {"per_image_ms": 4.0}, "forward": [forward(4, 100.0, 2.0), forward(1, 50.0, 1.0)]}


def test_the_guides_table_and_the_equal_load_table_come_from_the_csv(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "benchmarks.md"
    headline = report.build_report(run_dir, out)
    text = section(out)
    seed = text[text.index("### The guide's test plan"):text.index("### Same load")]
    assert "| Métrica | Individual | Batch | Mejora |" in seed
    assert table_row(seed, "RPS (ML)")[1:] == ["6.00 (5.00–7.00)", "12.00 (11.00–13.00)", "×2.00 (mejor)"]
    assert table_row(seed, "Latencia p50, ms")[1:3] == ["115 (110–120)", "150"]
    assert table_row(seed, "Latencia p95, ms")[1:] == ["260", "380", "×1.46 (peor)"]
    assert table_row(seed, "Errores, %")[1:] == ["0.00", "1.00", "+1.00 puntos"]
    # 160 answers from batches of 4 (40 batches) + 40 from batches of 2 (20 batches): 200 / 60
    assert table_row(seed, "Tamaño promedio de batch")[1:3] == ["1.00", f"{200 / 60:.2f}"]
    assert [line.split(" | ")[0].lstrip("| ") for line in seed.splitlines() if line.startswith("| ")] == [
        "Métrica", "RPS (ML)", "Latencia p50, ms", "Latencia p95, ms", "Errores, %",
        "Tamaño promedio de batch", "Tiempo por imagen, ms",
        "Eficiencia = (Tiempo_Individual × Batch_Size) / Tiempo_Batch"]
    equal = text[text.index("### Same load"):]
    assert "| Metric | individual | batch-timeout | batch-timeout against individual |" in equal
    assert table_row(equal, "Latency p99, ms")[1:3] == ["500", "420"]
    # per image: (160 * 60 / 4 + 40 * 50 / 2) / 200 = 17.0 ms; individual 4000 / 100 = 40.0 ms
    assert table_row(equal, "Forward time per image, ms")[1:3] == ["40.0", "17.0"]
    assert table_row(equal, "Batch efficiency, (T_individual × Batch_Size) / T_batch")[2].endswith(
        f"= {40.0 / 17.0:.2f}×")
    assert headline[0] == ("Guide's plan, batch against individual: 12.00 against 6.00 requests per second "
                           "= 2.00×.")
    assert "did not produce results" in text  # no benchmark.json
    (run_dir / "benchmark.json").write_text(json.dumps(BENCHMARK))
    report.build_report(run_dir, out)
    pipeline = "Pipeline efficiency (requests/s ÷ model-only images/s at that batch size), %"
    row = table_row(section(out), pipeline)
    assert row[1] == "32 (28–38)"  # individual at 20 users: 6.5 req/s ÷ 20 images/s at batch 1
    assert row[2].startswith(f"{100 * 12.0 / (20.0 + (200 / 60 - 1) / 3 * 20.0):.0f} ")  # at 3.33
    assert "| 4 | 100.0 | 25.0 | 40.0 | (50.0 × 4) / 100.0 = 2.00× |" in section(out)


def test_worker_histograms_win_over_the_answers(tmp_path: Path) -> None:
    worker = {"histograms": {"inference_batch_size": {"count": 10, "sum": 35},
                             "inference_forward_seconds": {"count": 10, "sum": 0.7},
                             "inference_batch_wait_seconds": {"count": 10, "sum": 0.5}}}
    runs = [record("individual", 4, rps=3.0, roles=("seed", "equal"), batches=[(1, 30, 900.0)]),
            record("batch-timeout", 4, rps=6.0, roles=("seed", "equal"), batches=[(4, 60, 900.0)],
                   worker_metrics=worker)]
    report.build_report(write_runs(tmp_path / "run", runs, **{**PLAN, "equal_users": 4}), tmp_path / "b.md")
    text = section(tmp_path / "b.md")
    assert table_row(text, "Mean batch size")[2] == "3.50"
    assert table_row(text, "Forward time per image, ms")[2] == "20.0"  # 0.7 s / 35 images
    assert table_row(text, "Wait for a batch to fill (worker metrics), ms")[1:3] == ["—", "50"]
    assert "`inference_batch_size`" in text


def test_plots_csv_and_final_stats(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "benchmarks.md"
    run = run_dir / "runs" / "individual-u010-r1"
    lines = list(csv.reader(open(run / "locust_stats.csv", newline="")))
    lines[-1][STATS_HEADER.index("Requests/s")] = "99.5"
    with open(run / "locust_final_stats.csv", "w", newline="") as fh:  # the locustfile's: it wins
        csv.writer(fh).writerows(lines)
    report.build_report(run_dir, out)
    text = out.read_text()
    assert table_row(section(out), "RPS (ML)")[1] == "53.25 (7.00–99.50)"
    for name in ("throughput_vs_users.png", "p95_vs_users.png", "batch_size_distribution.png"):
        assert (out.parent / "benchmarks" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](benchmarks/{name})" in text
    with open(out.parent / "benchmarks" / "runs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    batch = next(r for r in rows if r["variant"] == "batch-timeout" and r["repeat"] == "2")
    assert len(rows) == 6 and (batch["requests_per_s"], batch["p95_ms"], batch["error_percent"],
                               batch["batch_policy"]) == ("13", "380", "1", "timeout")
    with pytest.raises(ValueError, match="no measured runs"):
        report.build_report(write_runs(tmp_path / "empty", []), out)


def test_reads_the_benchmark_and_interpolates_between_sizes(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text(json.dumps({**BENCHMARK, "forward": [forward(4, 40.0, 2.0),
                                                                          forward(1, 20.0, 1.0)]}))
    ceiling = report.read_benchmark(tmp_path / "b.json")
    assert ceiling is not None and ceiling.about == (
        "model efficientnet_lite0, weights efficientnet-lite0.pth, device cpu, threads 2, repeats 20, "
        "preprocess_ms_per_image 4.00")
    assert [ceiling.images_per_s_at(s) for s in (2.5, 0.5, 16)] == [pytest.approx(75.0), 50.0, 100.0]
    assert report.read_benchmark(tmp_path / "none.json") is None
    for text in ("{}", json.dumps({**BENCHMARK, "forward": []}), "[1, 2]", "{not json"):
        (tmp_path / "b.json").write_text(text)
        assert report.read_benchmark(tmp_path / "b.json") is None


@pytest.mark.parametrize(("body", "timeout", "found"), [
    (f"import json, sys\njson.dump({BENCHMARK!r}, open(sys.argv[sys.argv.index('--json') + 1], 'w'))\n",
     60.0, True),
    ("import sys\nsys.exit(3)\n", 60.0, False), ("import time\ntime.sleep(300)\n", 0.5, False)])
def test_runs_the_model_benchmark_and_reads_its_json(tmp_path: Path, body: str, timeout: float,
                                                     found: bool) -> None:
    """A stand-in loadtest/model_benchmark.py in a scratch project: it answers, fails or overstays."""
    (tmp_path / "loadtest").mkdir()
    (tmp_path / "loadtest" / "__init__.py").write_text("")
    (tmp_path / "loadtest" / "model_benchmark.py").write_text(body)
    ceiling = report.run_benchmark(tmp_path / "out" / "b.json", sizes=[4], log_path=tmp_path / "b.log",
                                   timeout=timeout, project_root=tmp_path)
    assert (ceiling is not None) is found


def test_sections_tables_and_numbers(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "b.md"
    report.replace_section(path, "tuning", "body 1")
    assert path.read_text() == "# Benchmarks\n\n<!-- BEGIN tuning -->\nbody 1\n<!-- END tuning -->\n"
    path.write_text("# T\n\n<!-- BEGIN other -->\nkeep\n<!-- END other -->\n")
    report.replace_section(path, "tuning", "one")
    report.replace_section(path, "tuning", "two\n")
    assert path.read_text() == ("# T\n\n<!-- BEGIN other -->\nkeep\n<!-- END other -->\n\n"
                                "<!-- BEGIN tuning -->\ntwo\n<!-- END tuning -->\n")
    path.write_text("<!-- BEGIN tuning -->\nhalf\n")
    with pytest.raises(ValueError, match="without"):
        report.replace_section(path, "tuning", "x")
    assert path.read_text() == "<!-- BEGIN tuning -->\nhalf\n"
    assert report.table(["A", "B"], [["1", "2"]]) == "| A | B |\n|---|---|\n| 1 | 2 |"
    assert (report.fmt(None), report.fmt(2.345, 2), report.fmt(1234.5, 0)) == ("—", "2.35", "1234")
    assert report.fmt_spread(Spread(2.0, 1.0, 3.0, 2), 1) == "2.0 (1.0–3.0)"
    assert report.fmt_spread(Spread(2.0, 2.0, 2.0, 2), 1) == "2.0" and report.fmt_spread(None) == "—"
