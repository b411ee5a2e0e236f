"""loadtest.report: the load-comparison section is built from the run's own files."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from loadtest.report import SECTION, build_report
from tests.unit.test_loadtest_ceiling import REPORT, forward

STATS_HEADER = [
    "Type",
    "Name",
    "Request Count",
    "Failure Count",
    "Median Response Time",
    "Average Response Time",
    "Min Response Time",
    "Max Response Time",
    "Average Content Size",
    "Requests/s",
    "Failures/s",
    "50%",
    "66%",
    "75%",
    "80%",
    "90%",
    "95%",
    "98%",
    "99%",
    "99.9%",
    "99.99%",
    "100%",
]
VARIANTS = [
    {"name": "individual", "mode": "individual", "env": {"USE_BATCH_PROCESSING": "false"}},
    {
        "name": "batch-timeout",
        "mode": "batch",
        "env": {
            "USE_BATCH_PROCESSING": "true",
            "BATCH_SIZE": "4",
            "BATCH_TIMEOUT": "2",
            "BATCH_POLICY": "timeout",
        },
    },
]


def write_run(
    root: Path,
    variant: str,
    users: int,
    repeat: int,
    *,
    rps: float,
    p50: int,
    p95: int,
    p99: int,
    requests: int = 100,
    failures: int = 0,
    batches: Sequence[tuple[int, int, float]] = ((1, 100, 5000.0),),
    roles: Sequence[str] = ("sweep",),
    worker: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    locust_cpu_s: float = 1.0,
    stack_cpu_s: float = 4.0,
) -> Path:
    """One run folder as runner.measure leaves it: run.json, locust's stats CSV, the batch tally."""
    run = root / "runs" / f"{variant}-u{users:03d}-r{repeat}"
    run.mkdir(parents=True)
    mode = "batch" if variant.startswith("b") and variant != "individual" else "individual"
    default_env = next((v["env"] for v in VARIANTS if v["name"] == variant), {})
    meta = {
        "variant": variant,
        "mode": mode,
        "env": env if env is not None else default_env,
        "users": users,
        "repeat": repeat,
        "roles": list(roles),
        "duration_s": 10.0,
        "locust_cpu_s": locust_cpu_s,
        "stack_cpu_s": stack_cpu_s,
        "worker_metrics": worker,
    }
    (run / "run.json").write_text(json.dumps(meta))
    percentiles = [p50, p50, p50, p50, p95, p95, p99, p99, p99, p99, p99]
    row = [
        "POST",
        "/predict",
        requests,
        failures,
        p50,
        p50 + 1.5,
        10,
        p99,
        500,
        rps,
        failures / 10,
        *percentiles,
    ]
    total = ["", "Aggregated", *row[2:]]
    with open(run / "locust_stats.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([STATS_HEADER, row, total])
    with open(run / "locust_batches.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["batch_size", "requests", "inference_ms_sum", "queue_ms_sum", "total_ms_sum"])
        for size, count, inference_sum in batches:
            writer.writerow([size, count, inference_sum, 10.0 * count, 100.0 * count])
    return run


def write_plan(root: Path, **extra: Any) -> None:
    plan = {
        "kind": "compare",
        "command": "python -m loadtest.compare --repeats 2",
        "started_at": "t0",
        "finished_at": "t1",
        "variants": VARIANTS,
        "baseline": "individual",
        "seed_batch": "batch-timeout",
        "seed_users": {"individual": 10, "batch": 20},
        "equal_users": 20,
        "warmup_s": 10,
        "machine": {"cpu": "Test CPU", "logical_cpus": 2},
        "errors": [],
        **extra,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "plan.json").write_text(json.dumps(plan))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Two repeats of the guide's runs and one sweep point."""
    root = tmp_path / "run"
    write_plan(root)
    for repeat, (ind_rps, bat_rps) in enumerate([(5.0, 11.0), (7.0, 13.0)], start=1):
        write_run(
            root,
            "individual",
            10,
            repeat,
            rps=ind_rps,
            p50=100 + 10 * repeat,
            p95=260,
            p99=300,
            roles=("seed",),
            batches=[(1, 100, 4000.0)],
        )
        write_run(
            root,
            "individual",
            20,
            repeat,
            rps=ind_rps + 0.5,
            p50=200,
            p95=400,
            p99=500,
            roles=("equal", "sweep"),
            batches=[(1, 100, 4000.0)],
        )
        write_run(
            root,
            "batch-timeout",
            20,
            repeat,
            rps=bat_rps,
            p50=150,
            p95=380,
            p99=420,
            roles=("seed", "equal", "sweep"),
            requests=200,
            failures=2,
            batches=[(4, 160, 160 * 60.0), (2, 40, 40 * 50.0)],
        )
    return root


def section(text: str) -> str:
    begin, end = text.index(f"<!-- BEGIN {SECTION} -->"), text.index(f"<!-- END {SECTION} -->")
    return text[begin:end]


def table_row(text: str, metric: str) -> list[str]:
    for line in text.splitlines():
        if line.startswith(f"| {metric} |"):
            return [cell.strip() for cell in line.strip("|").split("|")]
    raise AssertionError(f"no row {metric!r} in:\n{text}")


def test_seed_table_numbers_come_from_the_csv(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "benchmarks.md"
    build_report(run_dir, out)
    text = section(out.read_text())
    seed = text[text.index("### The guide's test plan") : text.index("### Same load")]
    assert "| Métrica | Individual | Batch | Mejora |" in seed
    # medians over the two repeats, with min–max: individual 5 and 7 -> 6.00 (5.00–7.00)
    assert table_row(seed, "RPS (ML)")[1:] == ["6.00 (5.00–7.00)", "12.00 (11.00–13.00)", "×2.00 (mejor)"]
    assert table_row(seed, "Latencia p50, ms")[1:3] == ["115 (110–120)", "150"]
    assert table_row(seed, "Latencia p95, ms")[1:] == ["260", "380", "×1.46 (peor)"]
    assert table_row(seed, "Errores, %")[1:] == ["0.00", "1.00", "+1.00 puntos"]
    assert table_row(seed, "Tamaño promedio de batch")[1:3] == ["1.00", f"{200 / 60:.2f}"]
    # one language per table: the guide's table has only its own (Spanish) rows
    names = [line.split(" | ")[0].lstrip("| ") for line in seed.splitlines() if line.startswith("| ")]
    assert names == ["Métrica", "RPS (ML)", "Latencia p50, ms", "Latencia p95, ms", "Errores, %",
                     "Tamaño promedio de batch", "Tiempo por imagen, ms",
                     "Eficiencia = (Tiempo_Individual × Batch_Size) / Tiempo_Batch"]
    equal = text[text.index("### Same load") :]
    assert table_row(equal, "Latency, 99th percentile (p99), ms")[1:3] == ["500", "420"]
    assert "| Metric | individual | batch-timeout | batch-timeout against individual |" in equal


def test_batch_size_and_forward_time_from_the_answers(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    build_report(run_dir, out)
    seed = section(out.read_text())
    # 160 answers from batches of 4 (40 batches) + 40 from batches of 2 (20 batches): 200 / 60
    assert table_row(seed, "Mean batch size, images per forward pass")[1:3] == ["1.00", f"{200 / 60:.2f}"]
    # per image: (160 * 60 / 4 + 40 * 50 / 2) / 200 = 17.0 ms; individual 4000 / 100 = 40.0 ms
    assert table_row(seed, "Forward time per image, ms")[1:3] == ["40.0", "17.0"]
    efficiency = table_row(seed, "Batch efficiency, (T_individual × Batch_Size) / T_batch")
    assert efficiency[2].endswith(f"= {40.0 / 17.0:.2f}×")


def test_worker_histograms_win_over_the_answers(tmp_path: Path) -> None:
    root = tmp_path / "run"
    write_plan(root, seed_users={"individual": 4, "batch": 4}, equal_users=4)
    worker = {
        "histograms": {
            "inference_batch_size": {"count": 10, "sum": 35, "buckets": {"4.0": 10, "+Inf": 10}},
            "inference_forward_seconds": {"count": 10, "sum": 0.7, "buckets": {"+Inf": 10}},
            "inference_batch_wait_seconds": {"count": 10, "sum": 0.5, "buckets": {"+Inf": 10}},
        },
        "counters": {},
    }
    write_run(root, "individual", 4, 1, rps=3.0, p50=10, p95=20, p99=30, roles=("seed", "equal"))
    write_run(
        root, "batch-timeout", 4, 1, rps=6.0, p50=10, p95=20, p99=30, roles=("seed", "equal"), worker=worker
    )
    out = tmp_path / "benchmarks.md"
    build_report(root, out)
    text = section(out.read_text())
    assert table_row(text, "Mean batch size, images per forward pass")[2] == "3.50"
    assert table_row(text, "Forward time per image, ms")[2] == "20.0"  # 0.7 s / 35 images
    wait = table_row(text, "Wait for a batch to fill (oldest request, worker metrics), mean, ms")
    assert wait[1:3] == ["—", "50"]
    assert "`inference_batch_size`" in text and "`inference_forward_seconds`" in text


def test_pipeline_efficiency_uses_the_model_benchmark(run_dir: Path, tmp_path: Path) -> None:
    benchmark = {**REPORT, "forward": [forward(1, 50.0, 1.0), forward(4, 100.0, 2.0)]}
    (run_dir / "benchmark.json").write_text(json.dumps(benchmark))
    out = tmp_path / "benchmarks.md"
    build_report(run_dir, out)
    text = section(out.read_text())
    row = table_row(
        text, "Pipeline efficiency, requests per second ÷ model-only images per second at that batch size, %"
    )
    # the equal-load table: individual at 20 users, median 6.5 req/s ÷ 20 images/s at batch 1 = 32.5 %
    assert row[1] == "32 (28–38)"
    # batch: 11 and 13 req/s at mean batch 3.33 -> 20 + (2.33 / 3) * 20 = 35.56 images/s -> 34 %
    rate = 20.0 + (200 / 60 - 1) / 3 * 20.0
    assert row[2].startswith(f"{100 * 12.0 / rate:.0f} ")
    assert "| 4 | 100.0 | 25.0 | 40.0 | (50.0 × 4) / 100.0 = 2.00× |" in text


def test_replaces_only_its_section(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    before = (
        "# Benchmarks\n\nIntro kept.\n\n<!-- BEGIN model-benchmark -->\nmodel table 1.23\n"
        "<!-- END model-benchmark -->\n\n<!-- BEGIN load-comparison -->\nold numbers 999\n"
        "<!-- END load-comparison -->\n\nTrailer kept.\n"
    )
    out.write_text(before)
    build_report(run_dir, out)
    build_report(run_dir, out)  # twice: still one section
    text = out.read_text()
    assert text.startswith(
        "# Benchmarks\n\nIntro kept.\n\n<!-- BEGIN model-benchmark -->\nmodel table 1.23\n"
    )
    assert text.endswith("<!-- END load-comparison -->\n\nTrailer kept.\n")
    assert "old numbers 999" not in text
    assert text.count("<!-- BEGIN load-comparison -->") == 1


def test_plots_and_runs_csv_are_written_and_embedded(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs" / "benchmarks.md"
    result = build_report(run_dir, out)
    assets = tmp_path / "docs" / "benchmarks"
    for name in ("throughput_vs_users.png", "p95_vs_users.png", "batch_size_distribution.png"):
        path = assets / name
        assert path in result.assets
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](benchmarks/{name})" in out.read_text()
    with open(assets / "runs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    seed_batch = [r for r in rows if r["variant"] == "batch-timeout" and r["repeat"] == "2"][0]
    assert float(seed_batch["requests_per_s"]) == 13.0
    assert float(seed_batch["p95_ms"]) == 380.0
    assert float(seed_batch["error_percent"]) == 1.0
    assert seed_batch["batch_policy"] == "timeout"


def test_headline_states_both_numbers(run_dir: Path, tmp_path: Path) -> None:
    result = build_report(run_dir, tmp_path / "benchmarks.md")
    assert result.headline[0] == (
        "Guide's plan, batch against individual: 12.00 against 6.00 requests per second = 2.00×."
    )


def test_final_stats_file_wins(run_dir: Path, tmp_path: Path) -> None:
    run = run_dir / "runs" / "individual-u010-r1"
    rows = list(csv.reader(open(run / "locust_stats.csv", newline="")))
    rows[-1][STATS_HEADER.index("Requests/s")] = "99.5"
    with open(run / "locust_final_stats.csv", "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    out = tmp_path / "benchmarks.md"
    build_report(run_dir, out)
    assert table_row(section(out.read_text()), "RPS (ML)")[1] == "53.25 (7.00–99.50)"


def test_no_runs_is_an_error(tmp_path: Path) -> None:
    write_plan(tmp_path / "run")
    with pytest.raises(ValueError, match="no measured runs"):
        build_report(tmp_path / "run", tmp_path / "benchmarks.md")
