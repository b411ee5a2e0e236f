"""Read back what the runs wrote (locust's CSV files, the batch tally, ``run.json``) and derive
from those files alone everything a report shows: the one definition of each measure.

Every measure of a run is over locust's measured window (after the ramp-up, ``--reset-stats``):
throughput and latency percentiles are locust's, CPU is ``cpu_s`` (``/proc``, per process tree,
over the same window: :mod:`loadtest.cpu`), so CPU per request = CPU seconds / requests counted.
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.metrics import BATCH_SIZE_METRIC, BATCH_WAIT_METRIC, FORWARD_METRIC

from .cpu import MACHINE

__all__ = ["CSV_PREFIX", "RUN_JSON", "SERVER_TREES", "STACK_TREES", "BatchRow", "Column", "LocustStats",
           "RunRecord", "Spread", "load_plan", "load_runs", "read_batches", "read_locust_stats", "select",
           "spread_of", "write_runs_csv"]

logger = logging.getLogger(__name__)

#: File names inside one run's folder.
RUN_JSON = "run.json"
CSV_PREFIX = "locust"
#: Process trees of this project's stack (``worker-1`` .. count as ``worker``), and of any server.
STACK_TREES = ("web", "nginx", "worker")
SERVER_TREES = (*STACK_TREES, "redis", "litserve")


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
    def error_percent(self) -> float | None:
        """Failed requests, % of requests; None without requests."""
        return 100.0 * self.failures / self.requests if self.requests else None

    @property
    def successes_per_s(self) -> float:
        """Requests per second that got a good answer."""
        return self.requests_per_s - self.failures_per_s


def _number(value: str | None) -> float | None:
    return None if value is None or value.strip() in {"", "N/A"} else float(value)


def read_locust_stats(path: Path) -> LocustStats:
    """Parse the ``Aggregated`` row of ``path`` (locust's ``--csv PREFIX`` writes ``PREFIX_stats.csv``)."""
    with open(path, newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if row.get("Name") == "Aggregated"]
    if not rows:
        raise ValueError(f"{path} has no Aggregated row: is it a locust _stats.csv file?")
    row = rows[-1]
    times = [_number(row.get(k)) for k in ("Average Response Time", "50%", "95%", "99%", "Max Response Time")]
    return LocustStats(int(row["Request Count"]), int(row["Failure Count"]),
                       _number(row["Requests/s"]) or 0.0, _number(row["Failures/s"]) or 0.0, *times)


@dataclass(frozen=True)
class BatchRow:
    """Answers that came from batches of one size, as tallied by the locustfile."""

    batch_size: int
    requests: int
    inference_ms_sum: float


def read_batches(path: Path) -> list[BatchRow]:
    """Parse ``PREFIX_batches.csv``; an absent file is an empty tally."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [BatchRow(int(row["batch_size"]), int(row["requests"]), float(row["inference_ms_sum"]))
                for row in csv.DictReader(fh) if int(row["batch_size"]) > 0]


@dataclass
class RunRecord:
    """One measured locust run and everything derived from its files."""

    path: Path
    meta: dict[str, Any]
    stats: LocustStats
    batches: list[BatchRow] = field(default_factory=list)

    def __post_init__(self) -> None:
        meta = self.meta  # a run.json without these keys is no run (KeyError: load_runs skips it)
        self.variant, self.mode, self.users = str(meta["variant"]), str(meta["mode"]), int(meta["users"])
        self.repeat = int(meta.get("repeat", 1))
        #: Which parts of the plan this run serves (``seed``, ``equal``, ``sweep``, a load level).
        self.roles: tuple[str, ...] = tuple(meta.get("roles") or ())
        self.env: dict[str, str] = dict(meta.get("env") or {})  #: the variant's settings

    # --- from the answers (batch_size, timings_ms.inference) -------------------------
    @property
    def answered(self) -> int:
        """Good answers that carried a batch_size."""
        return sum(r.requests for r in self.batches)

    def batch_distribution(self) -> dict[int, float]:
        """Forward passes per batch size, from the answers (requests / size)."""
        return {r.batch_size: r.requests / r.batch_size for r in self.batches}

    @property
    def mean_batch_client(self) -> float | None:
        """Images per forward pass, from the answers: answers / the batches they came from."""
        passes = sum(self.batch_distribution().values())
        return self.answered / passes if passes else None

    @property
    def per_image_ms_client(self) -> float | None:
        """Forward time per image: mean over answers of timings_ms.inference / batch_size."""
        n = self.answered
        return sum(r.inference_ms_sum / r.batch_size for r in self.batches) / n if n else None

    # --- from the worker's histograms (workers.metrics), else the answers ----------------
    def _histogram(self, name: str) -> tuple[float, float] | None:
        found = ((self.meta.get("worker_metrics") or {}).get("histograms") or {}).get(name)
        return (float(found["count"]), float(found["sum"])) if found else None

    @property
    def mean_batch_worker(self) -> float | None:
        found = self._histogram(BATCH_SIZE_METRIC)
        return found[1] / found[0] if found and found[0] > 0 else None

    @property
    def mean_batch(self) -> float | None:
        """Images per forward pass: the worker's own count, else what the answers imply."""
        worker = self.mean_batch_worker
        return worker if worker is not None else self.mean_batch_client

    @property
    def per_image_ms(self) -> float | None:
        """Forward seconds summed over batches / images in them, in ms; else from the answers."""
        forward, images = self._histogram(FORWARD_METRIC), self._histogram(BATCH_SIZE_METRIC)
        if forward and images and images[1] > 0:
            return forward[1] * 1000.0 / images[1]
        return self.per_image_ms_client

    @property
    def batch_wait_ms(self) -> float | None:
        """Mean wait of a batch's oldest request before dispatch (worker histogram), ms."""
        found = self._histogram(BATCH_WAIT_METRIC)
        return found[1] * 1000.0 / found[0] if found and found[0] > 0 else None

    # --- CPU (run.json's cpu_s: seconds per process tree over the measured window) ----------
    @property
    def window_s(self) -> float | None:
        value = self.meta.get("cpu_window_s")
        return float(value) if value else None

    def cpu_s(self, trees: Collection[str] | None = None) -> float | None:
        """CPU seconds of ``trees`` (None: every measured tree; ``worker`` includes ``worker-1`` ..);
        None when none of them was measured."""
        seconds = {k: float(v) for k, v in (self.meta.get("cpu_s") or {}).items() if k != MACHINE}
        picked = [v for k, v in seconds.items() if trees is None or k.split("-")[0] in trees or k in trees]
        return sum(picked) if picked else None

    def cpu_ms(self, trees: Collection[str] | None = None) -> float | None:
        """CPU milliseconds per request of ``trees``."""
        seconds = self.cpu_s(trees)
        return None if seconds is None or not self.stats.requests else seconds * 1000.0 / self.stats.requests

    def cores_busy(self, trees: Collection[str] | None = None) -> float | None:
        """CPU seconds of ``trees`` per second of the window: 2.0 is both cores of a 2-core machine."""
        seconds, window = self.cpu_s(trees), self.window_s
        return seconds / window if seconds is not None and window else None

    def others_busy(self) -> float | None:
        """Cores busy outside the measured trees (this runner, other users of the machine): a run
        where this is high was disturbed."""
        machine, window = (self.meta.get("cpu_s") or {}).get(MACHINE), self.window_s
        if machine is None or not window:
            return None
        return max(float(machine) - (self.cpu_s() or 0.0), 0.0) / window


def load_run(path: Path) -> RunRecord:
    """Read one run folder: ``run.json``, locust's stats (the locustfile's ``locust_final_stats.csv``
    when present, else locust's own ``locust_stats.csv``) and ``locust_batches.csv``."""
    meta = json.loads((path / RUN_JSON).read_text())
    final = path / f"{CSV_PREFIX}_final_stats.csv"
    stats = read_locust_stats(final if final.exists() else path / f"{CSV_PREFIX}_stats.csv")
    batches = read_batches(path / f"{CSV_PREFIX}_batches.csv")
    return RunRecord(path, meta, stats, batches)


def load_runs(run_dir: Path) -> list[RunRecord]:
    """Every readable run under ``run_dir/runs``; unreadable ones are logged and skipped."""
    records = []
    for path in sorted((run_dir / "runs").glob(f"*/{RUN_JSON}")):
        try:
            records.append(load_run(path.parent))
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("skipping run %s: %s", path.parent, exc)
    return records


def load_plan(run_dir: Path) -> tuple[dict[str, Any], list[RunRecord], list[str]]:
    """``plan.json``, the runs and the variant names in plan order; ValueError when nothing was measured."""
    plan = json.loads((run_dir / "plan.json").read_text())
    records = load_runs(run_dir)
    if not records:
        raise ValueError(f"no measured runs under {run_dir / 'runs'}: nothing to report")
    variants = [v["name"] for v in plan.get("variants") or []] or sorted({r.variant for r in records})
    return plan, records, variants


@dataclass(frozen=True)
class Spread:
    """Median and range of one metric over repeats."""

    median: float
    low: float
    high: float
    n: int


def select(records: Sequence[RunRecord], *, variant: str | None = None, users: int | None = None,
           role: str | None = None) -> list[RunRecord]:
    """Runs matching every given filter."""
    return [r for r in records
            if (variant is None or r.variant == variant) and (users is None or r.users == users)
            and (role is None or role in r.roles)]


def spread_of(records: Sequence[RunRecord], get: Callable[[RunRecord], float | None]) -> Spread | None:
    """Median, min and max of one metric over ``records`` (None values left out; None when all are)."""
    present = [float(v) for r in records if (v := get(r)) is not None]
    if not present:
        return None
    return Spread(statistics.median(present), min(present), max(present), len(present))


#: A CSV column: its name and how to read it from a run (None: an empty cell).
Column = tuple[str, Callable[["RunRecord"], Any]]


def write_runs_csv(records: Sequence[RunRecord], path: Path, columns: Sequence[Column]) -> Path:
    """One row per measured run: ``columns``, then the run's folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([name for name, _ in columns] + ["run_dir"])
        for r in records:
            values = [get(r) for _, get in columns] + [str(r.path)]
            writer.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)
                             for v in values])
    return path
