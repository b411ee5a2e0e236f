"""The one runner of every plan: variants × loads × repeats, alternated (A B C A B C) so a drift of
the machine falls on all of them. Each session starts a fresh server, drops a warm-up and measures
each load with headless locust while /proc is sampled; the reports read the run folder alone.

A tree's CPU time sums every process ever seen in it at its last reading (one that exits keeps what
it used); ``cutime`` is left out so that a reaped child is not counted twice.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from common import config
from deploy.stack import ROOT, Process
from workers.metrics import BATCH_SIZE_METRIC, BATCH_WAIT_METRIC, FORWARD_METRIC

from .report import OUT, describe_machine
from .results import CSV_PREFIX, MACHINE, RUN_JSON, read_locust_stats
from .stack import READY_TIMEOUT_S, LoadtestError, Server, Stack, variant_redis_url

logger = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
WARMUP_S = 10.0  #: dropped seconds of load on each fresh server
REDIS_DB_SPAN = 3  #: stack i uses the base Redis DB + (i mod span)
#: locust's --stop-timeout: waiting for a slow last request would stretch the measured window.
STOP_TIMEOUT_S, LOCUST_SLACK_S = 0.0, 60.0
HISTOGRAMS = (BATCH_SIZE_METRIC, BATCH_WAIT_METRIC, FORWARD_METRIC)
#: Planning guesses for the ETA, corrected by the real pace as phases finish.
_START_S, _LOCUST_OVERHEAD_S, _BEFORE_S = 15.0, 4.0, 60.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  #: of /proc/stat's cpu line: user, nice, system, irq, softirq, steal


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    start_ticks: int  #: with the pid, names one process even when pids are reused
    cpu_ticks: int  #: utime + stime, every thread


def parse_stat(text: str) -> ProcStat:
    """A ``/proc/<pid>/stat`` line, fields counted from the last ``)`` (the name may hold any)."""
    head, sep, tail = text.rpartition(")")
    fields = tail.split()  # fields[0] is field 3 (state) of proc(5)
    if not sep or len(fields) < 20:
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    return ProcStat(int(head.split("(", 1)[0]), int(fields[1]), int(fields[19]),
                    int(fields[11]) + int(fields[12]))


def read_stats(proc: Path = Path("/proc")) -> dict[int, ProcStat]:
    stats = {}
    for entry in os.scandir(proc):
        if entry.name.isdigit():
            try:
                with open(f"{entry.path}/stat") as fh:
                    stat = parse_stat(fh.read())
            except (OSError, ValueError):  # it exited while read
                continue
            stats[stat.pid] = stat
    return stats


def machine_busy_seconds(stat_text: str) -> float:
    for line in stat_text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            return sum(values[i] for i in _BUSY_FIELDS if i < len(values)) / CLOCK_TICKS
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def descendants(parents: Mapping[int, int], root: int) -> set[int]:
    """``root`` and every process below it (empty when root is gone)."""
    if root not in parents:
        return set()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {root}, [root]
    while todo:
        new = [c for c in children.get(todo.pop(), []) if c not in found]
        found.update(new)
        todo += new
    return found


class TreeCounter:
    """CPU seconds of one process tree: every process ever seen in it, each at its last reading."""

    def __init__(self, root: int) -> None:
        self.root = root
        self._ticks: dict[tuple[int, int], int] = {}  #: (pid, start_ticks) -> utime + stime

    def update(self, stats: Mapping[int, ProcStat]) -> float:
        for pid in descendants({p: s.ppid for p, s in stats.items()}, self.root):
            key = (pid, stats[pid].start_ticks)
            self._ticks[key] = max(self._ticks.get(key, 0), stats[pid].cpu_ticks)
        return sum(self._ticks.values()) / CLOCK_TICKS


@dataclass(frozen=True)
class Sample:
    t: float  #: wall-clock time
    seconds: Mapping[str, float]  #: CPU seconds of each tree so far


def at(samples: Sequence[Sample], name: str, t: float) -> float | None:
    """Tree ``name``'s CPU seconds at ``t``: linear between samples, flat outside; None if unsampled."""
    points = [(s.t, s.seconds[name]) for s in samples if name in s.seconds]
    if not points:
        return None
    if t <= points[0][0]:
        return points[0][1]
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return points[-1][1]


def window(samples: Sequence[Sample], start: float, end: float) -> dict[str, float]:
    out = {}
    for name in dict.fromkeys(n for s in samples for n in s.seconds):
        before, after = at(samples, name, start), at(samples, name, end)
        if before is not None and after is not None:
            out[name] = max(after - before, 0.0)
    return out


class Sampler:
    """Samples named process trees and the machine in a thread; :meth:`track` adds a tree started
    meanwhile (locust)."""

    def __init__(self, roots: Mapping[str, int] | None = None, interval: float = 0.25,
                 proc: Path = Path("/proc")) -> None:
        self.interval, self.proc, self.samples = interval, proc, list[Sample]()
        self._counters: dict[str, TreeCounter] = {}
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        for name, pid in (roots or {}).items():
            self.track(name, pid)

    def track(self, name: str, pid: int) -> None:
        with self._lock:
            if name in self._counters or name == MACHINE:
                raise ValueError(f"already tracking a tree named {name!r}")
            self._counters[name] = TreeCounter(pid)
        self.sample()

    def sample(self) -> None:
        stats, busy = read_stats(self.proc), machine_busy_seconds((self.proc / "stat").read_text())
        with self._lock:
            seconds = {n: c.update(stats) for n, c in self._counters.items()}
            self.samples.append(Sample(time.time(), {**seconds, MACHINE: busy}))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


class LocustRunError(LoadtestError):
    """A locust run produced no statistics (it crashed, or ran past its time limit)."""


@dataclass(frozen=True)
class Load:
    """One locust run: closed-loop users for a measured duration."""

    users: int
    duration_s: float
    spawn_rate: float | None = None  #: users/s; None starts every user within about a second
    roles: tuple[str, ...] = ()  #: which parts of the plan this run serves

    def __post_init__(self) -> None:
        if self.users < 1 or self.duration_s <= 0 or (self.spawn_rate is not None and self.spawn_rate <= 0):
            raise ValueError(f"a Load needs users >= 1, duration_s > 0 and spawn_rate > 0, got {self}")

    @property
    def rate(self) -> float:
        return self.spawn_rate or float(self.users)

    @property
    def run_time_s(self) -> int:
        """locust --run-time: the ramp-up (reset away by --reset-stats) plus the measured duration."""
        return math.ceil(self.users / self.rate + self.duration_s)


@dataclass(frozen=True)
class Session:
    """One server start: a variant (anything with a ``name``), its loads, its repeat and DB offset."""

    variant: Any
    loads: tuple[Load, ...]
    repeat: int
    db_offset: int

    def phases(self, warmup_s: float) -> list[float]:
        """Planned seconds of each phase: start, warm-up (if any), one per load."""
        planned = [_START_S] + ([warmup_s + 1 + _LOCUST_OVERHEAD_S] if warmup_s > 0 else [])
        return planned + [load.run_time_s + _LOCUST_OVERHEAD_S for load in self.loads]


def merge_loads(tagged: Iterable[tuple[int, str]]) -> dict[int, tuple[str, ...]]:
    """(users, role) pairs -> users -> its roles, fewest users first: one run serves every role."""
    roles: dict[int, tuple[str, ...]] = {}
    for users, role in tagged:
        roles[users] = roles.get(users, ()) + (role,)
    return dict(sorted(roles.items()))


def alternate(variants: Sequence[Any], loads: tuple[Load, ...] | Callable[[Any], tuple[Load, ...]],
              repeats: int) -> list[Session]:
    """Every variant once per repeat in the same order (A B C A B C), its DB offset by its place."""
    return [Session(v, loads(v) if callable(loads) else loads, repeat, offset)
            for repeat in range(1, repeats + 1) for offset, v in enumerate(variants)]


def format_seconds(seconds: float) -> str:
    hours, rest = divmod(max(0, round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """A stderr line per phase: elapsed, and the planned seconds left scaled by the pace so far."""

    def __init__(self, total_phases: int, planned_s: float) -> None:
        self.total_phases, self.planned_s, self.started = total_phases, planned_s, time.monotonic()
        self.done_phases, self.done_planned_s, self._done_s, self._current = 0, 0.0, 0.0, 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def eta(self) -> float:
        remaining = max(self.planned_s - self.done_planned_s, 0.0)
        pace = self._done_s / self.done_planned_s if self.done_planned_s > 0 else 1.0
        return remaining * min(max(pace, 0.5), 3.0)

    def start(self, label: str, planned_s: float) -> None:
        self._current = planned_s
        number, width = min(self.done_phases + 1, self.total_phases), len(str(self.total_phases))
        print(f"[{number:>{width}}/{self.total_phases} | elapsed {format_seconds(self.elapsed())} | ETA "
              f"{format_seconds(self.eta())}] {label}", file=sys.stderr, flush=True)

    def finish(self) -> None:
        self.done_phases, self.done_planned_s = self.done_phases + 1, self.done_planned_s + self._current
        self._done_s, self._current = self.elapsed(), 0.0

    def skip(self, phases: int, planned_s: float) -> None:
        """Drop phases that will not run (a failed session) from the plan."""
        self.total_phases = max(self.total_phases - phases, self.done_phases, 1)
        self.planned_s = max(self.planned_s - planned_s, self.done_planned_s, 1e-9)


def locust_command(host: str, load: Load, csv_prefix: Path) -> list[str]:
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", host, "--headless",
            "--users", str(load.users), "--spawn-rate", f"{load.rate:g}", "--run-time", f"{load.run_time_s}s",
            "--stop-timeout", f"{STOP_TIMEOUT_S:g}", "--reset-stats", "--only-summary",
            "--csv", str(csv_prefix), "PhotoUploader"]


def run_locust(host: str, load: Load, csv_prefix: Path, log_path: Path,
               on_start: Callable[[int], None] = lambda pid: None) -> dict[str, Any]:
    """Run locust to completion (killed if it overstays); ``on_start`` gets its pid once it runs."""
    csv_prefix = csv_prefix.resolve()
    argv, limit, timed_out = locust_command(host, load, csv_prefix), load.run_time_s + LOCUST_SLACK_S, False
    with Process(argv, log_path=log_path, cwd=csv_prefix.parent, name="locust", grace=5.0) as locust:
        on_start(locust.pid)
        start = time.monotonic()
        try:
            code = locust.wait(limit)
        except subprocess.TimeoutExpired:
            logger.warning("locust ran past %.0fs; killing it", limit)
            timed_out, code = True, -9
    return {"locust_returncode": code, "locust_timed_out": timed_out, "wall_s": time.monotonic() - start,
            "command": argv[1:]}


_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\] [^\n]*?/[A-Z]+/[\w.]+: ([^\n]*)$",
                       re.MULTILINE)


def locust_window(log: str) -> tuple[float, float] | None:
    """Wall-clock, from locust's last ``Resetting stats`` (ramp-up over) to ``--run-time limit reached``."""
    start = end = None
    for match in _LOG_LINE.finditer(log):
        t = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").timestamp() + int(match[2]) / 1000.0
        if match[3].startswith("Resetting stats"):
            start = t
        elif match[3].startswith("--run-time limit reached") and end is None:
            end = t
    return (start, end) if start is not None and end is not None and end > start else None


def _local_redis_pid(redis_url: str) -> int | None:
    """The Redis server's pid when it runs on this machine (its CPU then counts), else None."""
    try:
        with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
            pid = int(client.info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError) as exc:
        logger.warning("no Redis process id from %s: %s", redis_url, exc)
        return None
    return pid if Path(f"/proc/{pid}").exists() else None  # else another host or container


def parse_metrics(text: str) -> dict[str, tuple[float, float]]:
    """The :data:`HISTOGRAMS` in Prometheus text: name -> (count, sum) over every label set."""
    found = {}
    for family in text_string_to_metric_families(text):
        if family.type == "histogram" and family.name in HISTOGRAMS:
            count, total = (sum(s.value for s in family.samples if s.name == f"{family.name}_{part}")
                            for part in ("count", "sum"))
            found[family.name] = (count, total)
    return found


def scrape_metrics(urls: Sequence[str]) -> dict[str, tuple[float, float]] | None:
    """Every worker's histograms, summed; None (logged) when there is none or one does not answer."""
    total: dict[str, tuple[float, float]] = {}
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=3.0) as response:
                found = parse_metrics(response.read().decode("utf-8", errors="replace"))
        except (OSError, ValueError) as exc:
            logger.warning("no worker metrics from %s: %s", url, exc)
            return None
        for name, (count, total_sum) in found.items():
            old = total.get(name, (0.0, 0.0))
            total[name] = (old[0] + count, old[1] + total_sum)
    return total if urls else None


def measure(server: Server, load: Load, run_dir: Path, roots: Mapping[str, int],
            meta: Mapping[str, Any]) -> Path:
    """Run ``load``; write locust's CSVs and ``run.json`` (CPU per tree over locust's window, the
    workers' histograms' difference)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    before, started_at = scrape_metrics(server.metrics_urls), time.time()
    with Sampler(roots) as sampler:
        run = run_locust(server.url, load, run_dir / CSV_PREFIX, run_dir / "locust.log",
                         lambda pid: sampler.track("locust", pid))
    after = scrape_metrics(server.metrics_urls)
    if not (run_dir / f"{CSV_PREFIX}_stats.csv").exists():
        raise LocustRunError(f"locust wrote no stats for {run_dir} (exit {run['locust_returncode']}); "
                             "see locust.log")
    span = locust_window((run_dir / "locust.log").read_text(errors="replace"))
    if span is None:
        logger.warning("%s: no measured window in locust's log; using the last %.0fs", run_dir,
                       load.duration_s)
        span = (sampler.samples[-1].t - load.duration_s, sampler.samples[-1].t)
    worker = None if before is None or after is None else {"histograms": {
        n: {"count": c - before.get(n, (0.0, 0.0))[0], "sum": s - before.get(n, (0.0, 0.0))[1]}
        for n, (c, s) in sorted(after.items())}}
    record = {**meta, "users": load.users, "spawn_rate": load.rate, "duration_s": load.duration_s,
              "run_time_s": load.run_time_s, "roles": list(load.roles), "started_at": started_at, **run,
              "cpu_window": list(span), "cpu_window_s": span[1] - span[0],
              "cpu_s": window(sampler.samples, *span), "worker_metrics": worker}
    (run_dir / RUN_JSON).write_text(json.dumps(record, indent=2) + "\n")
    return run_dir


def _warm_up(server: Server, users: int, session_dir: Path, warmup_s: float) -> None:
    """Load the fresh server for ``warmup_s`` (dropped); fail if it answered nothing at all."""
    prefix = session_dir / "warmup"
    run_locust(server.url, Load(users, warmup_s), prefix, session_dir / "warmup.log")
    try:
        stats = read_locust_stats(Path(f"{prefix}_stats.csv"))
    except (OSError, ValueError) as exc:
        raise LocustRunError(f"warm-up of {server.name} wrote no stats ({exc}); see {session_dir}") from exc
    if stats.requests and stats.requests == stats.failures:
        tails = "".join(f"\n{n} log:\n{s.log_tail()}" for n, s in server.services.items())
        raise LoadtestError(f"{server.name} failed all {stats.requests} warm-up uploads; see {session_dir}"
                            + tails)


#: Builds a session's server: (session, its Redis URL, its log folder) -> a server not yet started.
ServerFactory = Callable[[Session, str, Path], Server]


@dataclass(frozen=True)
class Options:
    """How every session of a plan runs."""

    root: Path  #: the run folder: runs/ and stacks/ go under it
    redis_url: str
    warmup_s: float = WARMUP_S
    ready_timeout_s: float = READY_TIMEOUT_S
    redis_db_span: int = REDIS_DB_SPAN
    flush_db: bool = True  #: off when the DB is shared
    project_root: Path = ROOT

    def project_stack(self, session: Session, redis_url: str, log_dir: Path) -> Server:
        return Stack(session.variant, redis_url=redis_url, log_dir=log_dir, project_root=self.project_root,
                     flush=self.flush_db)


def run_session(session: Session, options: Options, progress: Progress,
                make_server: ServerFactory | None = None) -> list[Path]:
    """Start the session's server, warm it up, measure every load, stop it; the run folders."""
    variant = session.variant
    session_dir = options.root / "stacks" / f"{variant.name}-r{session.repeat}"
    redis_url = variant_redis_url(options.redis_url, session.db_offset % options.redis_db_span)
    env = dict(getattr(variant, "env", {}))
    left, run_dirs = session.phases(options.warmup_s), []

    def phase(text: str) -> None:
        progress.start(f"{variant.name} r{session.repeat}: {text}", left[0])

    def done() -> None:
        progress.finish()
        left.pop(0)

    try:
        phase(f"start ({env}), wait until it classifies")
        with (make_server or options.project_stack)(session, redis_url, session_dir) as server:
            ready_s = server.wait_ready(options.ready_timeout_s)
            done()
            roots = server.cpu_roots()
            if server.uses_redis and (pid := _local_redis_pid(redis_url)) is not None:
                roots["redis"] = pid
            if options.warmup_s > 0:
                users = max(load.users for load in session.loads)
                phase(f"warm-up, {users} users for {options.warmup_s:g}s (dropped)")
                _warm_up(server, users, session_dir, options.warmup_s)
                done()
            meta = {"variant": variant.name, "mode": getattr(variant, "mode", ""), "env": env,
                    "workers": getattr(variant, "workers", 1), "repeat": session.repeat, "ready_s": ready_s,
                    "redis_url": redis_url, "cpu_roots": roots, **getattr(variant, "meta", {})}
            for load in session.loads:
                phase(f"measure {load.users} users for {load.duration_s:g}s")
                run_dir = options.root / "runs" / f"{variant.name}-u{load.users:03d}-r{session.repeat}"
                run_dirs.append(measure(server, load, run_dir, roots, meta))
                done()
    finally:
        if left:
            progress.skip(len(left), sum(left))
    return run_dirs


def _number_list(cast: Callable[[str], float], low: float, what: str) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        try:
            values = [cast(x) for x in text.split(",") if x.strip()]
        except ValueError:
            values = []
        if not values or min(values) < low:
            raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
        return values
    return parse


int_list = _number_list(int, 1, "positive integers")
float_list = _number_list(float, 0.0, "non-negative numbers")


@dataclass
class Plan:
    """What one run does: its sessions, what ``plan.json`` says about them, and its report."""

    kind: str  #: ``compare``, ``tune``, ``accelerator``, ``peers``
    sessions: list[Session]
    record: dict[str, Any]  #: written to plan.json beside the fields every plan has
    #: (run folder, report file) -> console lines; ValueError when there is nothing to report.
    report: Callable[[Path, Path], list[str]]
    make_server: ServerFactory | None = None  #: None: this project's stack for each Variant
    #: Run first, on a quiet machine (the model-only benchmark): run folder -> errors.
    before: Callable[[Path], list[str]] = field(default=lambda _run_dir: [])


class PlanCLI:
    """Every plan's command line: the shared options, the plan's own (``arguments``), values left
    unset filled from ``fill`` (name -> (quick, full)), then ``build`` (ValueError: a usage error)."""

    def __init__(self, kind: str, doc: str, arguments: Callable[[Callable[..., Any]], None],
                 fill: Mapping[str, tuple[Any, Any]], build: Callable[[argparse.Namespace], Plan]) -> None:
        self.kind, self.fill, self.build = kind, {"warmup": (1.0, WARMUP_S), "repeats": (1, 2), **fill}, build
        self.parser = parser = argparse.ArgumentParser(prog=f"python -m loadtest.{kind}",
                                                       description=doc.splitlines()[0])
        add = parser.add_argument
        add("--quick", action="store_true", help="a tiny run (seconds per variant), for tests")
        add("--repeats", type=int, help="run the whole plan this many times")
        add("--warmup", type=float, help=f"dropped seconds per stack ({self.fill['warmup'][1]:g})")
        add("--out", type=Path, default=Path(OUT), help="report file (default: %(default)s)")
        add("--csv-dir", type=Path, help=f"folder for CSVs and logs (default: run/{kind}-<time>)")
        add("--redis-url", default=config.value("LOADTEST_REDIS_URL"),
            help="Redis of the stacks, flushed before each start (default: %(default)s)")
        add("--redis-db-span", type=int, default=REDIS_DB_SPAN, help="stack i uses DB + (i mod span)")
        add("--keep-db", action="store_true", help="do not flush the Redis DB (a shared DB)")
        add("--ready-timeout", type=float, default=READY_TIMEOUT_S, help="seconds to wait for /readyz")
        add("--report", type=Path, metavar="RUN_DIR", help="only rebuild the report from RUN_DIR")
        arguments(add)

    def parse(self, argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Plan]:
        args = self.parser.parse_args(argv)
        for name, (quick, full) in self.fill.items():
            if getattr(args, name, None) is None:
                setattr(args, name, quick if args.quick else full)
        try:
            if args.repeats < 1 or args.warmup < 0 or args.redis_db_span < 1:
                raise ValueError("--repeats and --redis-db-span must be >= 1, --warmup >= 0")
            if any(v <= 0 for k, v in vars(args).items() if "duration" in k):
                raise ValueError("durations must be > 0")
            variant_redis_url(args.redis_url, 0)
            variant_redis_url(args.redis_url, args.redis_db_span - 1)
            return args, self.build(args)
        except ValueError as exc:
            self.parser.error(str(exc))

    def main(self, argv: Sequence[str] | None = None) -> int:
        args, plan = self.parse(argv)
        return run_plan(plan, args, argv)


def _prepare_run_dir(kind: str, csv_dir: Path | None) -> Path:
    """Create the run folder; log the runner's messages into it (warnings also to the console)."""
    run_dir = csv_dir or Path("run") / f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    handler, console = logging.FileHandler(run_dir / f"{kind}.log"), logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    console.setLevel(logging.WARNING)
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    logging.getLogger().addHandler(console)
    return run_dir


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def run_plan(plan: Plan, args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """Run ``plan`` (``--report``: only rebuild its report); 0 when every session ran, 1 when some
    failed, 2 when nothing could be reported."""
    if args.report is not None:
        print(*plan.report(args.report, args.out), sep="\n")
        return 0
    run_dir = _prepare_run_dir(plan.kind, args.csv_dir)
    options = Options(root=run_dir, redis_url=args.redis_url, redis_db_span=args.redis_db_span,
                      flush_db=not args.keep_db, warmup_s=args.warmup, ready_timeout_s=args.ready_timeout)
    errors: list[str] = []
    command = ["python", "-m", f"loadtest.{plan.kind}", *(sys.argv[1:] if argv is None else argv)]
    variants = {s.variant.name: {"name": s.variant.name, "mode": getattr(s.variant, "mode", ""),
                                 "env": dict(getattr(s.variant, "env", {}))} for s in plan.sessions}
    record = {"kind": plan.kind, "command": shlex.join(command), "started_at": _now(),
              "machine": describe_machine(ROOT), "errors": errors, "quick": args.quick,
              "warmup_s": args.warmup, "redis_url": args.redis_url, "repeats": args.repeats,
              "variants": list(variants.values()), **plan.record}

    def write_record() -> None:
        (run_dir / "plan.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    write_record()
    phases = [p for s in plan.sessions for p in s.phases(options.warmup_s)]
    progress = Progress(len(phases) + 1, sum(phases) + _BEFORE_S)
    print(f"plan: {len(plan.sessions)} server starts, about {format_seconds(sum(phases))}; in {run_dir}",
          file=sys.stderr)
    progress.start("before the sessions (the model-only benchmark, if any)", _BEFORE_S)
    errors += plan.before(run_dir)
    progress.finish()
    for session in plan.sessions:
        started = time.monotonic()
        try:
            run_session(session, options, progress, plan.make_server)
        except (LoadtestError, OSError, subprocess.SubprocessError) as exc:
            logger.error("session failed after %.0fs: %s", time.monotonic() - started, exc)
            errors.append(f"{session.variant.name} repeat {session.repeat}: {exc}".splitlines()[0])
    record["finished_at"] = _now()
    write_record()
    try:
        lines = plan.report(run_dir, args.out)
    except ValueError as exc:
        print(f"no report: {exc}", *(f"  {e}" for e in errors), sep="\n", file=sys.stderr)
        return 2
    print(f"done in {format_seconds(progress.elapsed())}; report: {args.out}; runs: {run_dir}", *lines,
          sep="\n")
    for error in errors:
        print(f"problem: {error}", file=sys.stderr)
    return 1 if errors else 0
