"""loadtest.ceiling: reading the model-only benchmark's JSON, whatever its exact shape."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from loadtest.ceiling import parse_benchmark, read_benchmark, run_benchmark

# The shape python -m workers.benchmark --json writes (trimmed).
WORKERS_BENCHMARK = {
    "command": "python -m workers.benchmark --sizes 1,4",
    "machine": {"cpu": "x", "device": "cpu", "threads": 2, "torch": "2.5"},
    "model": "efficientnet_lite0",
    "weights": "/very/long/path/efficientnet-lite0.pth",
    "preprocess": {"per": 4, "median_ms": 16.0, "per_image_ms": 4.0, "images_per_s": 250.0},
    "forward": [
        {"batch_size": 1, "per": 1, "median_ms": 20.0, "per_image_ms": 20.0, "images_per_s": 50.0},
        {"batch_size": 4, "per": 4, "median_ms": 40.0, "per_image_ms": 10.0, "images_per_s": 100.0},
    ],
}


def test_reads_the_workers_benchmark_format() -> None:
    ceiling = parse_benchmark(WORKERS_BENCHMARK)
    assert [(p.batch_size, p.median_ms, p.images_per_s) for p in ceiling.points] == [
        (1, 20.0, 50.0),
        (4, 40.0, 100.0),
    ]
    assert ceiling.meta["model"] == "efficientnet_lite0"
    assert ceiling.meta["device"] == "cpu" and ceiling.meta["threads"] == 2
    assert ceiling.meta["weights"] == "efficientnet-lite0.pth"
    assert ceiling.meta["preprocess_ms_per_image"] == 4.0
    assert ceiling.points[1].per_image_ms == 10.0


@pytest.mark.parametrize(
    "data",
    [
        {"results": [{"size": 2, "median_ms": 30.0}]},
        [{"batch_size": 2, "images_per_sec": 2 * 1000 / 30.0}],
        {"2": {"median_ms": 30.0}},
    ],
)
def test_accepts_other_shapes(data: object) -> None:
    (point,) = parse_benchmark(data).points
    assert point.batch_size == 2 and point.median_ms == pytest.approx(30.0)
    assert point.images_per_s == pytest.approx(2000 / 30.0)


def test_skips_junk_and_trusts_the_rate_over_a_per_image_median() -> None:
    data = {"forward": [{"batch_size": "x"}, 7, {"batch_size": 4, "median_ms": 10.0, "images_per_s": 100.0}]}
    (point,) = parse_benchmark(data).points
    assert point.median_ms == 40.0  # 10 ms was per image: 4 images at 100/s take 40 ms


def test_interpolates_between_sizes_and_clamps() -> None:
    ceiling = parse_benchmark(WORKERS_BENCHMARK)
    assert ceiling.images_per_s_at(2.5) == pytest.approx(75.0)
    assert ceiling.images_per_s_at(0.5) == 50.0 and ceiling.images_per_s_at(16) == 100.0
    assert ceiling.median_ms_at(4) == 40.0


def test_read_missing_or_empty(tmp_path: Path) -> None:
    assert read_benchmark(tmp_path / "none.json") is None
    (tmp_path / "empty.json").write_text("{}")
    assert read_benchmark(tmp_path / "empty.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert read_benchmark(tmp_path / "bad.json") is None


def test_runs_the_module_and_reads_its_json(tmp_path: Path) -> None:
    """A stand-in workers/benchmark.py in a scratch project: arguments in, JSON out."""
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "__init__.py").write_text("")
    (tmp_path / "workers" / "benchmark.py").write_text(
        "import argparse, json\n"
        "p = argparse.ArgumentParser(); p.add_argument('--json'); p.add_argument('--sizes'); "
        "p.add_argument('--repeats')\n"
        "a = p.parse_args()\n"
        "rows = [{'batch_size': int(s), 'median_ms': 10.0 * int(s)} for s in a.sizes.split(',')]\n"
        "json.dump({'forward': rows, 'repeats': int(a.repeats)}, open(a.json, 'w'))\n"
    )
    ceiling = run_benchmark(
        tmp_path / "out" / "b.json",
        sizes=[1, 8],
        extra_args=["--repeats", "3"],
        log_path=tmp_path / "b.log",
        project_root=tmp_path,
        python=sys.executable,
    )
    assert ceiling is not None
    assert [p.batch_size for p in ceiling.points] == [1, 8] and ceiling.meta["repeats"] == 3
    assert json.loads((tmp_path / "out" / "b.json").read_text())["forward"][1]["median_ms"] == 80.0


def test_a_failing_benchmark_gives_none(tmp_path: Path) -> None:
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "__init__.py").write_text("")
    (tmp_path / "workers" / "benchmark.py").write_text("import sys\nprint('no model here')\nsys.exit(3)\n")
    assert run_benchmark(tmp_path / "b.json", project_root=tmp_path, log_path=tmp_path / "b.log") is None
    assert "no model here" in (tmp_path / "b.log").read_text()
