"""Every measure a report shows, each defined once, from a run folder's files alone: all over
locust's measured window, so CPU per request = CPU seconds / requests counted."""

from __future__ import annotations

import csv
import json
import logging
import statistics
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from operator import attrgetter, methodcaller
from pathlib import Path
from typing import Any

from workers.metrics import BATCH_SIZE_METRIC, BATCH_WAIT_METRIC, FORWARD_METRIC

logger = logging.getLogger(__name__)

RUN_JSON, CSV_PREFIX = "run.json", "locust"
#: The whole machine's busy time in ``cpu_s``: what other processes took meanwhile.
MACHINE = "machine"
#: Process trees of this project's stack (``worker-1`` .. count as ``worker``), of any server, of a run.
STACK_TREES = ("web", "nginx", "worker")
SERVER_TREES = (*STACK_TREES, "redis", "litserve")
TREES = (*SERVER_TREES, "locust")


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
        return 100.0 * self.failures / self.requests if self.requests else None

    @property
    def successes_per_s(self) -> float:
        return self.requests_per_s - self.failures_per_s


def _number(value: str | None) -> float | None:
    return None if value is None or value.strip() in {"", "N/A"} else float(value)


def read_locust_stats(path: Path) -> LocustStats:
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
    if not path.exists():  # an empty tally
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
        meta = self.meta  # without these keys it is no run (KeyError: load_runs skips it)
        self.variant, self.mode, self.users = str(meta["variant"]), str(meta["mode"]), int(meta["users"])
        self.repeat = int(meta.get("repeat", 1))
        self.roles: tuple[str, ...] = tuple(meta.get("roles") or ())  #: seed, equal, sweep, a load level
        self.env: dict[str, str] = dict(meta.get("env") or {})
        self.window_s: float | None = float(meta["cpu_window_s"]) if meta.get("cpu_window_s") else None
        self.cpu_by_tree = {k: float(v) for k, v in (meta.get("cpu_s") or {}).items()}

    def batch_distribution(self) -> dict[int, float]:
        """Forward passes per batch size, from the answers' batch_size."""
        return {r.batch_size: r.requests / r.batch_size for r in self.batches}

    @property
    def mean_batch_client(self) -> float | None:
        passes = sum(self.batch_distribution().values())
        return sum(r.requests for r in self.batches) / passes if passes else None

    @property
    def per_image_ms_client(self) -> float | None:
        n = sum(r.requests for r in self.batches)
        return sum(r.inference_ms_sum / r.batch_size for r in self.batches) / n if n else None

    def _worker(self, name: str, scale: float = 1.0, per_image: bool = False) -> float | None:
        """The workers' histogram ``name``: its sum × ``scale`` per observation, or per image."""
        found = (self.meta.get("worker_metrics") or {}).get("histograms") or {}
        top, images = found.get(name), found.get(BATCH_SIZE_METRIC)
        base = float((images or {}).get("sum", 0) if per_image else top["count"] if top else 0)
        return float(top["sum"]) * scale / base if top and top["count"] > 0 and base > 0 else None

    @property
    def mean_batch_worker(self) -> float | None:
        return self._worker(BATCH_SIZE_METRIC)

    @property
    def mean_batch(self) -> float | None:
        """Images per forward pass: the workers' own count, else what the answers imply."""
        worker = self.mean_batch_worker
        return worker if worker is not None else self.mean_batch_client

    @property
    def per_image_ms(self) -> float | None:
        """Forward time per image: the workers' histograms, else the answers."""
        worker = self._worker(FORWARD_METRIC, 1000.0, per_image=True)
        return worker if worker is not None else self.per_image_ms_client

    @property
    def batch_wait_ms(self) -> float | None:
        return self._worker(BATCH_WAIT_METRIC, 1000.0)

    def cpu_s(self, trees: Collection[str] | None = None) -> float | None:
        """CPU seconds of ``trees`` (None: all; ``worker`` holds ``worker-1`` ..); None if unmeasured."""
        picked = [v for k, v in self.cpu_by_tree.items()
                  if k != MACHINE and (trees is None or k in trees or k.split("-")[0] in trees)]
        return sum(picked) if picked else None

    def cpu_ms(self, trees: Collection[str] | None = None) -> float | None:
        seconds = self.cpu_s(trees)
        return None if seconds is None or not self.stats.requests else seconds * 1000.0 / self.stats.requests

    def cores_busy(self, trees: Collection[str] | None = None) -> float | None:
        seconds = self.cpu_s(trees)
        return seconds / self.window_s if seconds is not None and self.window_s else None

    def busiest(self) -> tuple[str, float] | None:
        """The process tree (each worker on its own) that kept the most cores busy, and how many."""
        busy = {k: v / self.window_s for k, v in self.cpu_by_tree.items() if k != MACHINE and self.window_s}
        return max(busy.items(), key=lambda item: item[1]) if busy else None

    def others_busy(self) -> float | None:
        """Cores busy outside the measured trees (this runner, other users): high means disturbed."""
        machine = self.cpu_by_tree.get(MACHINE)
        if machine is None or not self.window_s:
            return None
        return max(machine - (self.cpu_s() or 0.0), 0.0) / self.window_s


#: A measure or a label of a run: how to read it (None: not measured).
Get = Callable[[RunRecord], Any]
_LOCUST = ("requests", "failures", "error_percent", "requests_per_s", "successes_per_s", "mean_ms", "p50_ms",
           "p95_ms", "p99_ms", "max_ms")
#: Every measure, defined once, by its column in the runs CSV (one row per run); the reports' tables and
#: :class:`Group` read theirs from here.
COLUMNS: dict[str, Get] = {
    "variant": attrgetter("variant"), "mode": attrgetter("mode"), "workers": lambda r: r.meta.get("workers"),
    "use_batch_processing": lambda r: r.env.get("USE_BATCH_PROCESSING", ""),
    "batch_size_setting": lambda r: r.env.get("BATCH_SIZE", ""),
    "batch_timeout_s": lambda r: r.env.get("BATCH_TIMEOUT", ""),
    "batch_policy": lambda r: r.env.get("BATCH_POLICY", ""),
    "users": attrgetter("users"), "repeat": attrgetter("repeat"), "roles": lambda r: " ".join(r.roles),
    "duration_s": lambda r: r.meta.get("duration_s"), **{k: attrgetter(f"stats.{k}") for k in _LOCUST},
    "mean_batch_size": attrgetter("mean_batch"), "mean_batch_size_client": attrgetter("mean_batch_client"),
    "forward_ms_per_image": attrgetter("per_image_ms"), "batch_wait_ms": attrgetter("batch_wait_ms"),
    "window_s": attrgetter("window_s"), **{f"cpu_s_{t}": methodcaller("cpu_s", (t,)) for t in TREES},
    "cpu_s_machine": lambda r: r.cpu_by_tree.get(MACHINE),
    **{f"cpu_ms_per_request_{t}": methodcaller("cpu_ms", (t,)) for t in TREES},
    "stack_cpu_ms_per_request": methodcaller("cpu_ms", STACK_TREES),
    "server_cpu_ms_per_request": methodcaller("cpu_ms", SERVER_TREES),
    "cpu_ms_per_request": methodcaller("cpu_ms"), "cores_busy": methodcaller("cores_busy"),
    "server_cores_busy": methodcaller("cores_busy", SERVER_TREES),
    "other_cores_busy": methodcaller("others_busy"),
}


def load_runs(run_dir: Path) -> list[RunRecord]:
    """Every readable run under ``run_dir/runs`` (the locustfile's ``_final_stats.csv`` first)."""
    records = []
    for path in sorted((run_dir / "runs").glob(f"*/{RUN_JSON}")):
        final, run = path.parent / f"{CSV_PREFIX}_final_stats.csv", path.parent
        try:
            stats = read_locust_stats(final if final.exists() else run / f"{CSV_PREFIX}_stats.csv")
            records.append(RunRecord(run, json.loads(path.read_text()), stats,
                                     read_batches(run / f"{CSV_PREFIX}_batches.csv")))
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("skipping run %s: %s", run, exc)
    return records


def load_plan(run_dir: Path) -> tuple[dict[str, Any], list[RunRecord], list[str]]:
    """``plan.json``, the runs and the variant names in plan order; ValueError when nothing was measured."""
    plan = json.loads((run_dir / "plan.json").read_text())
    if not (records := load_runs(run_dir)):
        raise ValueError(f"no measured runs under {run_dir / 'runs'}: nothing to report")
    names = [v["name"] for v in plan.get("variants") or []]
    return plan, records, names or sorted({r.variant for r in records})


@dataclass(frozen=True)
class Spread:
    """Median and range of one metric over repeats."""
    median: float
    low: float
    high: float
    n: int


def select(records: Sequence[RunRecord], *, variant: str | None = None, users: int | None = None,
           role: str | None = None) -> list[RunRecord]:
    return [r for r in records if (variant is None or r.variant == variant)
            and (users is None or r.users == users) and (role is None or role in r.roles)]


def spread_of(records: Sequence[RunRecord], get: Callable[[RunRecord], float | None]) -> Spread | None:
    """Median, min and max over ``records`` (None values left out; None when all are)."""
    present = [float(v) for r in records if (v := get(r)) is not None]
    return Spread(statistics.median(present), min(present), max(present), len(present)) if present else None


@dataclass(frozen=True)
class Group:
    """One variant's runs at one user count: what every report's cell is a spread of."""
    variant: str
    users: int
    runs: Sequence[RunRecord]

    def of(self, get: Callable[[RunRecord], float | None]) -> Spread | None:
        return spread_of(self.runs, get)

    @classmethod
    def by_variant(cls, records: Sequence[RunRecord],
                   order: Sequence[str] = ()) -> dict[str, dict[int, Group]]:
        """variant -> users -> its runs: the variants in ``order`` first, fewest users first."""
        out: dict[str, dict[int, Group]] = {}
        for variant in dict.fromkeys([*order, *(r.variant for r in records)]):
            runs = select(records, variant=variant)
            for users in sorted({r.users for r in runs}):
                out.setdefault(variant, {})[users] = cls(variant, users, select(runs, users=users))
        return out

    @property
    def rps(self) -> Spread | None:
        return self.of(COLUMNS["requests_per_s"])

    @property
    def p95(self) -> Spread | None:
        return self.of(COLUMNS["p95_ms"])


def write_runs_csv(records: Sequence[RunRecord], path: Path, extra: Sequence[tuple[str, Get]] = ()) -> Path:
    """One row per run: :data:`COLUMNS`, a plan's ``extra`` columns, then the run's folder."""
    columns = [*COLUMNS.items(), *extra]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow([name for name, _ in columns] + ["run_dir"])
        for r in records:
            values = [get(r) for _, get in columns] + [str(r.path)]
            writer.writerow(["" if v is None else f"{v:.6g}" if isinstance(v, float) else v for v in values])
    return path
