"""The model-only ceiling: run ``python -m workers.benchmark`` and read its JSON.

The benchmark times the model's forward pass alone (no HTTP, no queue) for a
few batch sizes. Expected JSON (extra keys are kept, aliases accepted)::

    {"model": "efficientnet_lite0", "machine": {"device": "cpu", "threads": 2},
     "preprocess": {"per_image_ms": 4.1},
     "forward": [{"batch_size": 1, "median_ms": 21.5, "images_per_s": 46.5}, ...]}

``median_ms`` is the median wall time of one forward pass over the whole batch;
``images_per_s`` is ``batch_size * 1000 / median_ms``. Either may be missing if
the other is there. The list may also sit under ``results``, be the whole
document, or be a mapping from batch size to its entry.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import defaults
from .stack import PROJECT_ROOT, kill_group

__all__ = ["Ceiling", "CeilingPoint", "parse_benchmark", "read_benchmark", "run_benchmark"]

logger = logging.getLogger(__name__)

_SIZE_KEYS = ("batch_size", "size", "bs", "batch")
_MS_KEYS = ("median_ms", "batch_median_ms", "median_batch_ms", "ms_median", "latency_ms_median", "p50_ms")
_RATE_KEYS = ("images_per_s", "images_per_sec", "images_per_second", "throughput", "imgs_per_s", "ips")
_LIST_KEYS = ("forward", "results", "sizes", "batches", "rows", "points")
#: Details worth showing in a report, looked up at the top level and under "machine".
_META_KEYS = ("model", "weights", "device", "threads", "torch_threads", "torch", "repeats")


@dataclass(frozen=True)
class CeilingPoint:
    """Model-only speed at one batch size."""

    batch_size: int
    median_ms: float  #: one forward pass over the whole batch
    images_per_s: float

    @property
    def per_image_ms(self) -> float:
        """Forward time per image at this batch size."""
        return self.median_ms / self.batch_size


@dataclass
class Ceiling:
    """All measured batch sizes, smallest first, plus whatever the benchmark said about itself."""

    points: list[CeilingPoint]
    meta: dict[str, Any] = field(default_factory=dict)

    def images_per_s_at(self, size: float) -> float | None:
        """Model-only images/s at ``size``, linear between measured sizes, clamped to the ends."""
        return self._at(size, "images_per_s")

    def median_ms_at(self, size: float) -> float | None:
        """Forward time of one batch of ``size`` images, interpolated the same way."""
        return self._at(size, "median_ms")

    def _at(self, size: float, attr: str) -> float | None:
        if not self.points:
            return None
        pts = self.points
        if size <= pts[0].batch_size:
            return float(getattr(pts[0], attr))
        for lo, hi in zip(pts, pts[1:]):
            if size <= hi.batch_size:
                frac = (size - lo.batch_size) / (hi.batch_size - lo.batch_size)
                return float(getattr(lo, attr) + frac * (getattr(hi, attr) - getattr(lo, attr)))
        return float(getattr(pts[-1], attr))


def _first(entry: Mapping[str, Any], keys: Sequence[str]) -> float | None:
    for key in keys:
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _point(entry: Any, size_hint: Any = None) -> CeilingPoint | None:
    if not isinstance(entry, Mapping):
        return None
    size = _first(entry, _SIZE_KEYS)
    if size is None and size_hint is not None:
        try:
            size = float(size_hint)
        except (TypeError, ValueError):
            return None
    ms = _first(entry, _MS_KEYS)
    rate = _first(entry, _RATE_KEYS)
    if size is None or size < 1 or (ms is None and rate is None):
        return None
    if ms is None:
        ms = size * 1000.0 / rate if rate else None
    if rate is None:
        rate = size * 1000.0 / ms if ms else None
    if not ms or not rate:
        return None
    implied_ms = size * 1000.0 / rate
    if size > 1 and not 0.5 < ms / implied_ms < 2.0:
        # median_ms disagrees with images_per_s: it is probably per image; trust the rate.
        logger.warning(
            "benchmark batch %d: median_ms %.1f vs %.1f implied by images_per_s", size, ms, implied_ms
        )
        ms = implied_ms
    return CeilingPoint(int(size), ms, rate)


def parse_benchmark(data: Any) -> Ceiling:
    """Read the benchmark's JSON defensively; entries it cannot read are skipped (logged)."""
    meta: dict[str, Any] = {}
    entries: Any = data
    if isinstance(data, Mapping):
        found = data.get("machine")
        machine: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
        for key in _META_KEYS:
            value = data.get(key, machine.get(key))
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                meta[key] = Path(value).name if isinstance(value, str) and "/" in value else value
        preprocess = data.get("preprocess")
        if isinstance(preprocess, Mapping) and isinstance(preprocess.get("per_image_ms"), (int, float)):
            meta["preprocess_ms_per_image"] = round(float(preprocess["per_image_ms"]), 2)
        if isinstance(data.get("command"), str):
            meta["command"] = data["command"]
        for key in _LIST_KEYS:
            if key in data:
                entries = data[key]
                break
    points: list[CeilingPoint] = []
    if isinstance(entries, Mapping):
        candidates = [_point(v, k) for k, v in entries.items()]
    elif isinstance(entries, list):
        candidates = [_point(v) for v in entries]
    else:
        candidates = []
    for point in candidates:
        if point is None:
            logger.warning("skipping an unreadable entry in the model benchmark JSON")
        else:
            points.append(point)
    unique = {p.batch_size: p for p in points}
    return Ceiling(sorted(unique.values(), key=lambda p: p.batch_size), meta)


def read_benchmark(path: Path) -> Ceiling | None:
    """Parse the JSON file at ``path``; None when it is missing, unreadable or holds no usable entry."""
    if not path.exists():
        return None
    try:
        ceiling = parse_benchmark(json.loads(path.read_text()))
    except (OSError, ValueError) as exc:
        logger.warning("no model-only benchmark at %s: %s", path, exc)
        return None
    return ceiling if ceiling.points else None


def run_benchmark(
    json_path: Path,
    *,
    sizes: Sequence[int] = defaults.BENCHMARK_SIZES,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    timeout: float = defaults.BENCHMARK_TIMEOUT_S,
    project_root: Path = PROJECT_ROOT,
    python: str = sys.executable,
) -> Ceiling | None:
    """Run ``python -m workers.benchmark --json PATH --sizes ... [extra_args]``; None (logged) if it fails."""
    cmd = [
        python,
        "-m",
        "workers.benchmark",
        "--json",
        str(json_path.resolve()),
        "--sizes",
        ",".join(map(str, sizes)),
    ]
    cmd += list(extra_args)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=project_root,
            env=dict(env) if env is not None else None,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("model benchmark ran past %.0fs; killed", timeout)
            kill_group(proc, timeout=5.0)
            return None
    finally:
        if log_path:
            log.close()  # type: ignore[union-attr]
    if code != 0:
        logger.warning("model benchmark exited with %s (see %s)", code, log_path)
        return None
    return read_benchmark(json_path)
