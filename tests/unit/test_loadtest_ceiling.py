"""loadtest.ceiling: reading ``workers.benchmark``'s report and running it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from loadtest.ceiling import read_benchmark, run_benchmark
from workers.benchmark import BenchmarkReport, ForwardTiming


def forward(size: int, median_ms: float, efficiency: float | None) -> ForwardTiming:
    return {"batch_size": size, "per": size, "median_ms": median_ms, "min_ms": median_ms, "max_ms": median_ms,
            "per_image_ms": median_ms / size, "images_per_s": size * 1000 / median_ms,
            "samples_ms": [median_ms], "efficiency": efficiency}


REPORT: BenchmarkReport = {
    "command": "python -m workers.benchmark --sizes 1,4",
    "machine": {"cpu": "x", "device": "cpu", "threads": 2, "torch": "2.5"},
    "model": "efficientnet_lite0",
    "weights": "/very/long/path/efficientnet-lite0.pth",
    "repeats": 20,
    "warmup": 3,
    "photos": ["chelsea"],
    "preprocess": {"per": 4, "median_ms": 16.0, "min_ms": 15.0, "max_ms": 17.0, "per_image_ms": 4.0,
                   "images_per_s": 250.0, "samples_ms": [16.0]},
    "forward": [forward(1, 20.0, 1.0), forward(4, 40.0, 2.0)],
}


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "benchmark.json"
    path.write_text(json.dumps(data))
    return path


def test_reads_the_report(tmp_path: Path) -> None:
    ceiling = read_benchmark(write(tmp_path, REPORT))
    assert ceiling is not None and ceiling.report == REPORT
    assert ceiling.meta == {"model": "efficientnet_lite0", "weights": "efficientnet-lite0.pth",
                            "device": "cpu",
                            "threads": 2, "repeats": 20, "preprocess_ms_per_image": 4.0}


def test_interpolates_between_sizes_and_clamps(tmp_path: Path) -> None:
    ceiling = read_benchmark(write(tmp_path, REPORT))
    assert ceiling is not None
    assert ceiling.images_per_s_at(2.5) == pytest.approx(75.0)  # 50/s at 1, 100/s at 4
    assert ceiling.images_per_s_at(0.5) == 50.0 and ceiling.images_per_s_at(16) == 100.0


@pytest.mark.parametrize("data", [{}, {**REPORT, "forward": []}, [1, 2], {"results": [{"size": 2}]}])
def test_another_shape_or_no_rows_is_no_ceiling(tmp_path: Path, data: object) -> None:
    assert read_benchmark(write(tmp_path, data)) is None


def test_missing_or_broken_file(tmp_path: Path) -> None:
    assert read_benchmark(tmp_path / "none.json") is None
    (tmp_path / "bad.json").write_text("{not json")
    assert read_benchmark(tmp_path / "bad.json") is None


def stand_in(project: Path, body: str) -> Path:
    (project / "workers").mkdir(parents=True)
    (project / "workers" / "__init__.py").write_text("")
    (project / "workers" / "benchmark.py").write_text(body)
    return project


def test_runs_the_module_and_reads_its_json(tmp_path: Path) -> None:
    """A stand-in workers/benchmark.py in a scratch project: arguments in, the report out."""
    project = stand_in(tmp_path / "project", (
        "import argparse, json, sys\n"
        "p = argparse.ArgumentParser(); p.add_argument('--json'); p.add_argument('--sizes'); "
        "p.add_argument('--repeats')\n"
        "a = p.parse_args()\n"
        f"report = {REPORT!r}\n"
        "report['repeats'] = int(a.repeats)\n"
        "report['forward'] = [r for r in report['forward'] if str(r['batch_size']) in a.sizes.split(',')]\n"
        "json.dump(report, open(a.json, 'w'))\n"))
    ceiling = run_benchmark(tmp_path / "out" / "b.json", sizes=[4], extra_args=["--repeats", "3"],
                            log_path=tmp_path / "b.log", project_root=project)
    assert ceiling is not None and ceiling.meta["repeats"] == 3
    assert [row["batch_size"] for row in ceiling.report["forward"]] == [4]


def test_a_failing_benchmark_gives_none(tmp_path: Path) -> None:
    project = stand_in(tmp_path, "import sys\nprint('no model here')\nsys.exit(3)\n")
    assert run_benchmark(tmp_path / "b.json", project_root=project, log_path=tmp_path / "b.log") is None
    assert "no model here" in (tmp_path / "b.log").read_text()


def test_an_overlong_benchmark_is_killed(tmp_path: Path) -> None:
    project = stand_in(tmp_path, "import time\ntime.sleep(300)\n")
    assert run_benchmark(tmp_path / "b.json", project_root=project, log_path=tmp_path / "b.log",
                         timeout=0.5) is None
    assert sys.executable  # the stand-in ran under this interpreter
