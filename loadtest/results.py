"""Read back what the runs wrote: locust's CSV files, the batch tally and ``run.json``.

Everything a report shows is derived here from those files, so a report can be
rebuilt from a run folder at any time (``python -m loadtest.report RUN_DIR``).
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .metrics import Histogram, Scrape, find_histogram

__all__ = [
    "BatchRow",
    "LocustStats",
    "RunRecord",
    "Spread",
    "load_runs",
    "read_batches",
    "read_locust_stats",
    "spread",
]

logger = logging.getLogger(__name__)

#: File names inside one run's folder.
RUN_JSON = "run.json"
CSV_PREFIX = "locust"


@dataclass(frozen=True)
class LocustStats:
    """The ``Aggregated`` row of a locust ``*_stats.csv`` file (times in milliseconds)."""

    requests: int
    failures: int
    requests_per_s: float
    failures_per_s: float
    mean_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    @property
    def error_rate(self) -> float | None:
        """Failed requests / requests (0..1), None without requests."""
        return self.failures / self.requests if self.requests else None

    @property
    def successes_per_s(self) -> float:
        """Requests per second that got a good answer."""
        return self.requests_per_s - self.failures_per_s


def _number(value: str | None) -> float | None:
    if value is None or value.strip() in {"", "N/A"}:
        return None
    return float(value)


def read_locust_stats(path: Path) -> LocustStats:
    """Parse the ``Aggregated`` row of ``path`` (locust's ``--csv PREFIX`` writes ``PREFIX_stats.csv``)."""
    with open(path, newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if row.get("Name") == "Aggregated"]
    if not rows:
        raise ValueError(f"{path} has no Aggregated row: is it a locust _stats.csv file?")
    row = rows[-1]
    return LocustStats(
        requests=int(row["Request Count"]),
        failures=int(row["Failure Count"]),
        requests_per_s=_number(row["Requests/s"]) or 0.0,
        failures_per_s=_number(row["Failures/s"]) or 0.0,
        mean_ms=_number(row["Average Response Time"]),
        p50_ms=_number(row.get("50%")),
        p95_ms=_number(row.get("95%")),
        p99_ms=_number(row.get("99%")),
        max_ms=_number(row.get("Max Response Time")),
    )


@dataclass(frozen=True)
class BatchRow:
    """Answers that came from batches of one size, as tallied by the locustfile."""

    batch_size: int
    requests: int
    inference_ms_sum: float
    queue_ms_sum: float
    total_ms_sum: float


def read_batches(path: Path) -> list[BatchRow]:
    """Parse ``PREFIX_batches.csv``; an absent file is an empty tally."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [
            BatchRow(
                int(row["batch_size"]),
                int(row["requests"]),
                float(row["inference_ms_sum"]),
                float(row["queue_ms_sum"]),
                float(row["total_ms_sum"]),
            )
            for row in csv.DictReader(fh)
        ]


@dataclass
class RunRecord:
    """One measured locust run and everything derived from its files."""

    path: Path
    meta: dict[str, Any]
    stats: LocustStats
    batches: list[BatchRow] = field(default_factory=list)
    worker: Scrape | None = None

    # --- what the run was -------------------------------------------------------------
    @property
    def variant(self) -> str:
        """Variant name (``individual``, ``batch-timeout``, ...)."""
        return str(self.meta.get("variant", "?"))

    @property
    def mode(self) -> str:
        """``individual`` or ``batch``."""
        return str(self.meta.get("mode", "?"))

    @property
    def users(self) -> int:
        """Concurrent closed-loop users."""
        return int(self.meta.get("users", 0))

    @property
    def repeat(self) -> int:
        """Which repeat of the plan (1-based)."""
        return int(self.meta.get("repeat", 1))

    @property
    def roles(self) -> tuple[str, ...]:
        """Which parts of the plan this run serves (``seed``, ``equal``, ``sweep``, a load level)."""
        return tuple(self.meta.get("roles") or ())

    @property
    def env(self) -> dict[str, str]:
        """The variant's settings."""
        return dict(self.meta.get("env") or {})

    # --- client side ------------------------------------------------------------------
    @property
    def answered(self) -> int:
        """Good answers that carried a batch_size."""
        return sum(r.requests for r in self.batches)

    @property
    def mean_batch_per_request(self) -> float | None:
        """Mean batch_size over answers (a request in a batch of 8 counts 8 times as often as one alone)."""
        n = self.answered
        return sum(r.batch_size * r.requests for r in self.batches) / n if n else None

    @property
    def mean_batch_client(self) -> float | None:
        """Mean batch size per forward pass, from answers: requests / number of batches they came from."""
        n = self.answered
        batches = sum(r.requests / r.batch_size for r in self.batches if r.batch_size > 0)
        return n / batches if batches else None

    @property
    def per_image_ms_client(self) -> float | None:
        """Forward time per image: sum over answers of timings_ms.inference / batch_size, over answers."""
        n = self.answered
        if not n:
            return None
        return sum(r.inference_ms_sum / r.batch_size for r in self.batches if r.batch_size > 0) / n

    def batch_distribution(self) -> dict[int, float]:
        """Number of forward passes per batch size, from answers (requests / size)."""
        return {r.batch_size: r.requests / r.batch_size for r in self.batches if r.batch_size > 0}

    # --- worker side ------------------------------------------------------------------
    def worker_batch_histogram(self) -> tuple[str, Histogram] | None:
        """The worker's batch-size histogram over this run, if it exports one."""
        return find_histogram(self.worker, suffix="batch_size")

    def worker_forward_histogram(self) -> tuple[str, Histogram] | None:
        """The worker's forward/inference duration histogram (seconds), if it exports one."""
        return find_histogram(self.worker, suffix="seconds", contains=("forward", "inference"))

    @property
    def batch_wait_ms(self) -> float | None:
        """Mean wait of a batch's oldest request before dispatch, from a ``*wait*_seconds`` histogram."""
        found = find_histogram(self.worker, suffix="seconds", contains=("wait",))
        mean = found[1].mean if found else None
        return None if mean is None else mean * 1000.0

    @property
    def mean_batch_worker(self) -> float | None:
        """Mean batch size per forward pass, from the worker's histogram."""
        found = self.worker_batch_histogram()
        return found[1].mean if found else None

    @property
    def per_image_ms_worker(self) -> float | None:
        """Forward seconds summed over batches / images in them, in ms (needs both histograms)."""
        forward, batch = self.worker_forward_histogram(), self.worker_batch_histogram()
        if not forward or not batch or batch[1].sum <= 0:
            return None
        return forward[1].sum * 1000.0 / batch[1].sum

    @property
    def mean_batch(self) -> float | None:
        """Mean batch size per forward pass: the worker's own count, else what the answers imply."""
        worker = self.mean_batch_worker
        return worker if worker is not None else self.mean_batch_client

    @property
    def per_image_ms(self) -> float | None:
        """Forward time per image: the worker's histograms, else the answers' timings_ms."""
        worker = self.per_image_ms_worker
        return worker if worker is not None else self.per_image_ms_client

    # --- cost -------------------------------------------------------------------------
    def cpu_ms_per_request(self, key: str) -> float | None:
        """CPU milliseconds per request of ``locust_cpu_s`` or ``stack_cpu_s``."""
        value = self.meta.get(key)
        if value is None or not self.stats.requests:
            return None
        return float(value) * 1000.0 / self.stats.requests


def load_run(path: Path) -> RunRecord:
    """Read one run folder: ``run.json``, locust's stats and ``locust_batches.csv``.

    The stats come from ``locust_final_stats.csv`` (written by the locustfile when
    locust stops) when present, else from locust's own ``locust_stats.csv``.
    """
    meta = json.loads((path / RUN_JSON).read_text())
    final = path / f"{CSV_PREFIX}_final_stats.csv"
    stats = read_locust_stats(final if final.exists() else path / f"{CSV_PREFIX}_stats.csv")
    batches = read_batches(path / f"{CSV_PREFIX}_batches.csv")
    return RunRecord(path, meta, stats, batches, Scrape.from_json(meta.get("worker_metrics")))


def load_runs(run_dir: Path) -> list[RunRecord]:
    """Every readable run under ``run_dir/runs``; unreadable ones are logged and skipped."""
    records = []
    for path in sorted((run_dir / "runs").glob("*")):
        if not (path / RUN_JSON).exists():
            continue
        try:
            records.append(load_run(path))
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("skipping run %s: %s", path, exc)
    return records


@dataclass(frozen=True)
class Spread:
    """Median and range of one metric over repeats."""

    median: float
    low: float
    high: float
    n: int


def spread(values: Iterable[float | None]) -> Spread | None:
    """Median, min and max of the values that are not None; None when none are."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    return Spread(statistics.median(present), min(present), max(present), len(present))


def select(
    records: Sequence[RunRecord],
    *,
    variant: str | None = None,
    users: int | None = None,
    role: str | None = None,
) -> list[RunRecord]:
    """Runs matching every given filter."""
    return [
        r
        for r in records
        if (variant is None or r.variant == variant)
        and (users is None or r.users == users)
        and (role is None or role in r.roles)
    ]
