"""The model-only ceiling: run ``python -m workers.benchmark --json`` and read its
``workers.benchmark.BenchmarkReport`` (per batch size: forward time, images/s, efficiency)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy

from deploy.stack import ROOT, Process
from workers.benchmark import BenchmarkReport

from . import defaults

__all__ = ["Ceiling", "read_benchmark", "run_benchmark"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ceiling:
    """A benchmark report, with model-only speed at any batch size."""

    report: BenchmarkReport
    #: What the report says about itself, for a report line.
    meta: dict[str, Any]

    def images_per_s_at(self, size: float) -> float:
        """Model-only images/s at ``size``, linear between measured sizes, clamped to the ends."""
        rows = sorted(self.report["forward"], key=lambda row: row["batch_size"])
        return float(numpy.interp(size, [r["batch_size"] for r in rows], [r["images_per_s"] for r in rows]))


def read_benchmark(path: Path) -> Ceiling | None:
    """The report at ``path``; None (logged) when it is missing, unreadable or has no forward rows."""
    if not path.exists():
        return None
    try:
        report: BenchmarkReport = json.loads(path.read_text())
        machine = report["machine"]
        meta = {"model": report["model"], "weights": Path(str(report["weights"])).name,
                "device": machine.get("device"), "threads": machine.get("threads"),
                "repeats": report["repeats"],
                "preprocess_ms_per_image": round(report["preprocess"]["per_image_ms"], 2)}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("no model-only benchmark at %s: %s", path, exc)
        return None
    return Ceiling(report, meta) if report["forward"] else None


def run_benchmark(json_path: Path, *, log_path: Path, sizes: Sequence[int] = defaults.BENCHMARK_SIZES,
                  extra_args: Sequence[str] = (), timeout: float = defaults.BENCHMARK_TIMEOUT_S,
                  project_root: Path = ROOT) -> Ceiling | None:
    """Run ``python -m workers.benchmark --json PATH --sizes ... [extra_args]``; None (logged) if it fails."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "workers.benchmark", "--json", str(json_path.resolve()),
            "--sizes", ",".join(map(str, sizes)), *extra_args]
    with Process(argv, log_path=log_path, cwd=project_root, name="workers.benchmark", grace=5.0) as bench:
        try:
            code = bench.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("model benchmark ran past %.0fs; killed", timeout)
            return None
    if code != 0:
        logger.warning("model benchmark exited with %s (see %s)", code, log_path)
        return None
    return read_benchmark(json_path)
