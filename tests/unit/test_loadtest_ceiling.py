"""The model-only ceiling of the reports: reading ``loadtest.model_benchmark``'s JSON and running it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest.model_benchmark import BenchmarkReport, ForwardTiming
from loadtest.report import read_benchmark, run_benchmark


def forward(size: int, median_ms: float, efficiency: float | None) -> ForwardTiming:
    return {"batch_size": size, "per": size, "median_ms": median_ms, "min_ms": median_ms, "max_ms": median_ms,
            "per_image_ms": median_ms / size, "images_per_s": size * 1000 / median_ms,
            "samples_ms": [median_ms], "efficiency": efficiency}


REPORT: BenchmarkReport = {
    "command": "python -m loadtest.model_benchmark --sizes 1,4",
    "machine": {"cpu": "x", "device": "cpu", "threads": 2, "torch": "2.5"}, "model": "efficientnet_lite0",
    "weights": "/very/long/path/efficientnet-lite0.pth", "repeats": 20, "warmup": 3, "photos": ["chelsea"],
    "preprocess": {"per": 4, "median_ms": 16.0, "min_ms": 15.0, "max_ms": 17.0, "per_image_ms": 4.0,
                   "images_per_s": 250.0, "samples_ms": [16.0]},
    "forward": [forward(1, 20.0, 1.0), forward(4, 40.0, 2.0)],
}


def test_reads_the_report_and_interpolates_between_sizes(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text(json.dumps(REPORT))
    ceiling = read_benchmark(tmp_path / "b.json")
    assert ceiling is not None and ceiling.meta == {
        "model": "efficientnet_lite0", "weights": "efficientnet-lite0.pth", "device": "cpu", "threads": 2,
        "repeats": 20, "preprocess_ms_per_image": 4.0}
    assert ceiling.images_per_s_at(2.5) == pytest.approx(75.0)  # 50/s at 1, 100/s at 4
    assert ceiling.images_per_s_at(0.5) == 50.0 and ceiling.images_per_s_at(16) == 100.0


@pytest.mark.parametrize("text", ["{}", json.dumps({**REPORT, "forward": []}), "[1, 2]", "{not json"])
def test_another_shape_no_rows_or_no_file_is_no_ceiling(tmp_path: Path, text: str) -> None:
    (tmp_path / "b.json").write_text(text)
    assert read_benchmark(tmp_path / "b.json") is None and read_benchmark(tmp_path / "none.json") is None


@pytest.mark.parametrize(("body", "timeout", "found"), [
    ("import argparse, json\np = argparse.ArgumentParser(); p.add_argument('--json'); "
     "p.add_argument('--sizes')\n"
     f"a = p.parse_args()\njson.dump({REPORT!r}, open(a.json, 'w'))\n", 60.0, True),
    ("import sys\nprint('no model here')\nsys.exit(3)\n", 60.0, False),
    ("import time\ntime.sleep(300)\n", 0.5, False),
])
def test_runs_the_module_and_reads_its_json(tmp_path: Path, body: str, timeout: float, found: bool) -> None:
    """A stand-in loadtest/model_benchmark.py in a scratch project: it answers, fails or overstays."""
    (tmp_path / "loadtest").mkdir()
    (tmp_path / "loadtest" / "__init__.py").write_text("")
    (tmp_path / "loadtest" / "model_benchmark.py").write_text(body)
    ceiling = run_benchmark(tmp_path / "out" / "b.json", sizes=[4], log_path=tmp_path / "b.log",
                            timeout=timeout,
                            project_root=tmp_path)
    assert (ceiling is not None) is found
    assert found or "Traceback" not in (tmp_path / "b.log").read_text()
