"""The one runner every plan uses: sessions of locust runs against freshly started servers.

A plan is variants × loads × repeats. A session starts one variant's server, waits until it
classifies, drops a warm-up, measures each load with headless locust (``--csv``,
``--reset-stats``) while :class:`loadtest.cpu.Sampler` reads ``/proc`` for every process tree the
server started, its Redis and locust, and scrapes the workers' histograms before and after; each
run's folder gets locust's CSVs and ``run.json``. A failed session goes into ``plan.json`` and the
plan goes on; the plan's report module then reads the folder (:mod:`loadtest.results`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import redis
from prometheus_client.parser import text_string_to_metric_families

from common import config
from deploy.stack import ROOT
from workers.metrics import BATCH_SIZE_METRIC, BATCH_WAIT_METRIC, FORWARD_METRIC

from . import cpu, defaults
from .markdown import describe_machine
from .results import CSV_PREFIX, RUN_JSON, read_locust_stats
from .stack import LoadtestError, Server, Stack, variant_redis_url

__all__ = ["LOCUSTFILE", "HISTOGRAMS", "Load", "LocustRunError", "Options", "Plan", "Progress", "Session",
           "alternate", "float_list", "format_seconds", "int_list", "local_redis_pid", "locust_command",
           "locust_window", "measure", "merge_loads", "parse_metrics", "parse_plan_args", "run_locust",
           "run_plan", "run_session", "scrape_metrics", "ServerFactory"]

logger = logging.getLogger(__name__)
_N = TypeVar("_N", int, float)

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
#: The workers' histograms a report reads (``workers.metrics`` names them).
HISTOGRAMS = (BATCH_SIZE_METRIC, BATCH_WAIT_METRIC, FORWARD_METRIC)
#: Planning guesses for the ETA (corrected by the real pace as phases finish).
_START_S, _LOCUST_OVERHEAD_S, _BENCHMARK_S = 15.0, 4.0, 60.0


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
        """Spawn rate passed to locust."""
        return self.spawn_rate or float(self.users)

    @property
    def run_time_s(self) -> int:
        """locust --run-time: the ramp-up (reset away by --reset-stats) plus the measured duration."""
        return math.ceil(self.users / self.rate + self.duration_s)


@dataclass(frozen=True)
class Session:
    """One server start: a variant (anything with a ``name``), its loads, which repeat, its DB offset."""

    variant: Any
    loads: tuple[Load, ...]
    repeat: int
    db_offset: int

    def phases(self, warmup_s: float) -> list[float]:
        """Planned seconds of each phase: start, warm-up (if any), one per load."""
        planned = [_START_S] + ([warmup_s + 1 + _LOCUST_OVERHEAD_S] if warmup_s > 0 else [])
        return planned + [load.run_time_s + _LOCUST_OVERHEAD_S for load in self.loads]


def merge_loads(tagged: Iterable[tuple[int, str]]) -> dict[int, tuple[str, ...]]:
    """(users, role) pairs -> users -> its roles, fewest users first: one run serves every role it can."""
    roles: dict[int, tuple[str, ...]] = {}
    for users, role in tagged:
        roles[users] = roles.get(users, ()) + (role,)
    return dict(sorted(roles.items()))


def alternate(variants: Sequence[Any], loads: Callable[[Any], tuple[Load, ...]],
              repeats: int) -> list[Session]:
    """Sessions in A B C A B C order: every variant once per repeat, its Redis DB offset by its place."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    return [Session(variant, loads(variant), repeat, offset)
            for repeat in range(1, repeats + 1) for offset, variant in enumerate(variants)]


# -- the progress line ---------------------------------------------------------------------

def format_seconds(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m40s``."""
    hours, rest = divmod(max(0, round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    """One line per phase with elapsed time and an ETA: the planned seconds still to go, scaled by
    how long the finished phases really took against their plan."""

    def __init__(self, total_phases: int, planned_s: float) -> None:
        if total_phases < 1 or planned_s <= 0:
            raise ValueError("Progress needs total_phases >= 1 and planned_s > 0")
        self.total_phases, self.planned_s, self.started = total_phases, planned_s, time.monotonic()
        self.done_phases, self.done_planned_s, self._done_elapsed_s, self._current = 0, 0.0, 0.0, 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def eta(self) -> float:
        """Seconds still to go, by the plan corrected for the pace so far (clamped: one phase far off
        its guess, a cached model or a slow start, must not swing it)."""
        remaining = max(self.planned_s - self.done_planned_s, 0.0)
        if self.done_planned_s <= 0:
            return remaining
        return remaining * min(max(self._done_elapsed_s / self.done_planned_s, 0.5), 3.0)

    def start(self, label: str, planned_s: float) -> None:
        self._current = planned_s
        number, width = min(self.done_phases + 1, self.total_phases), len(str(self.total_phases))
        print(f"[{number:>{width}}/{self.total_phases} | elapsed {format_seconds(self.elapsed())} | ETA "
              f"{format_seconds(self.eta())}] {label}", file=sys.stderr, flush=True)

    def finish(self) -> None:
        self.done_phases += 1
        self.done_planned_s += self._current
        self._done_elapsed_s, self._current = self.elapsed(), 0.0

    def skip(self, phases: int, planned_s: float) -> None:
        """Drop phases that will not run (a failed session) from the plan."""
        self.total_phases = max(self.total_phases - phases, self.done_phases, 1)
        self.planned_s = max(self.planned_s - planned_s, self.done_planned_s, 1e-9)


# -- one locust run ------------------------------------------------------------------------

def locust_command(host: str, load: Load, csv_prefix: Path) -> list[str]:
    """The headless locust command line for ``load``."""
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", host, "--headless",
            "--users", str(load.users), "--spawn-rate", f"{load.rate:g}", "--run-time", f"{load.run_time_s}s",
            "--stop-timeout", f"{defaults.STOP_TIMEOUT_S:g}", "--reset-stats", "--only-summary",
            "--csv", str(csv_prefix), "PhotoUploader"]


def run_locust(host: str, load: Load, csv_prefix: Path, *, log_path: Path,
               on_start: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run locust to completion (killed if it overstays); its command, exit status and wall time.
    ``on_start`` gets locust's pid as soon as it runs (the CPU sampler tracks it)."""
    csv_prefix = csv_prefix.resolve()  # locust runs in the run's folder, not ours
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    limit = load.run_time_s + defaults.STOP_TIMEOUT_S + defaults.LOCUST_SLACK_S
    argv, start, timed_out = locust_command(host, load, csv_prefix), time.monotonic(), False
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=csv_prefix.parent, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    if on_start is not None:
        on_start(proc.pid)
    try:
        code = proc.wait(limit)
    except subprocess.TimeoutExpired:
        logger.warning("locust ran past %.0fs; killing it", limit)
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
    return {"locust_returncode": code, "locust_timed_out": timed_out, "wall_s": time.monotonic() - start,
            "command": argv[1:]}


#: A line of locust's log: its time (to the millisecond) and message.
_LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\] [^\n]*?/[A-Z]+/[\w.]+: ([^\n]*)$",
                       re.MULTILINE)


def locust_window(log: str) -> tuple[float, float] | None:
    """Locust's measured window, wall-clock: from its last ``Resetting stats`` (the ramp-up is over;
    ``--reset-stats``) to ``--run-time limit reached``; None when the log lacks either."""
    start = end = None
    for match in _LOG_LINE.finditer(log):
        at = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S").timestamp() + int(match[2]) / 1000.0
        if match[3].startswith("Resetting stats"):
            start = at
        elif match[3].startswith("--run-time limit reached") and end is None:
            end = at
    return (start, end) if start is not None and end is not None and end > start else None


def local_redis_pid(redis_url: str) -> int | None:
    """The pid of the Redis server at ``redis_url`` when it runs on this machine (its CPU then
    counts), else None."""
    try:
        with redis.Redis.from_url(redis_url, socket_timeout=5) as client:
            pid = int(client.info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError) as exc:
        logger.warning("no Redis process id from %s: %s", redis_url, exc)
        return None
    if not Path(f"/proc/{pid}").exists():  # another host or container: its CPU is not visible here
        logger.warning("Redis pid %s (%s) is not on this machine: its CPU is not counted", pid, redis_url)
        return None
    return pid


# -- the workers' histograms -----------------------------------------------------------------

def parse_metrics(text: str) -> dict[str, tuple[float, float]]:
    """The :data:`HISTOGRAMS` in Prometheus text ``text``: name -> (count, sum) over every label set."""
    found = {}
    for family in text_string_to_metric_families(text):
        if family.type == "histogram" and family.name in HISTOGRAMS:
            found[family.name] = (sum(s.value for s in family.samples if s.name == f"{family.name}_count"),
                                  sum(s.value for s in family.samples if s.name == f"{family.name}_sum"))
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


def _delta(before: Mapping[str, tuple[float, float]] | None,
           after: Mapping[str, tuple[float, float]] | None) -> dict[str, Any] | None:
    if before is None or after is None:
        return None
    return {"histograms": {n: {"count": c - before.get(n, (0.0, 0.0))[0], "sum": s - before.get(n, (0.0,
                                                                                                    0.0))[1]}
                           for n, (c, s) in sorted(after.items())}}


# -- a session -----------------------------------------------------------------------------

def measure(server: Server, load: Load, run_dir: Path, roots: Mapping[str, int], meta: Mapping[str,
                                                                                               Any]) -> Path:
    """Run ``load`` against ``server`` while sampling the CPU of ``roots`` and locust; write locust's
    CSVs and ``run.json``: ``cpu_s``, CPU seconds per tree (and the machine's) in locust's measured
    window, and ``worker_metrics``, the histograms' difference over the run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    before, started_at = scrape_metrics(server.metrics_urls), time.time()
    with cpu.Sampler(roots, machine=True) as sampler:
        run = run_locust(server.url, load, run_dir / CSV_PREFIX, log_path=run_dir / "locust.log",
                         on_start=lambda pid: sampler.track("locust", pid))
    worker = _delta(before, scrape_metrics(server.metrics_urls))
    if not (run_dir / f"{CSV_PREFIX}_stats.csv").exists():
        raise LocustRunError(f"locust wrote no stats for {run_dir} (exit {run['locust_returncode']}); "
                             "see locust.log")
    window = locust_window((run_dir / "locust.log").read_text(errors="replace"))
    if window is None:  # no log lines to go by: the last duration_s seconds sampled
        logger.warning("%s: locust's log has no measured window; using the last %.0fs", run_dir,
                       load.duration_s)
        window = (sampler.samples[-1].t - load.duration_s, sampler.samples[-1].t)
    record = {**meta, "users": load.users, "spawn_rate": load.rate, "duration_s": load.duration_s,
              "run_time_s": load.run_time_s, "roles": list(load.roles), "started_at": started_at, **run,
              "cpu_window": list(window), "cpu_window_s": window[1] - window[0],
              "cpu_s": cpu.window(sampler.samples, *window), "worker_metrics": worker}
    (run_dir / RUN_JSON).write_text(json.dumps(record, indent=2) + "\n")
    return run_dir


def _warm_up(server: Server, users: int, session_dir: Path, warmup_s: float) -> None:
    """Load the fresh server for ``warmup_s`` (dropped); fail if it answered nothing at all."""
    prefix = session_dir / "warmup"
    run_locust(server.url, Load(users, warmup_s), prefix, log_path=session_dir / "warmup.log")
    try:
        stats = read_locust_stats(Path(f"{prefix}_stats.csv"))
    except (OSError, ValueError) as exc:
        raise LocustRunError(f"warm-up of {server.name} wrote no stats ({exc}); see {session_dir}") from exc
    if stats.requests and stats.requests == stats.failures:
        tails = "".join(f"\n{n} log:\n{s.log_tail()}" for n, s in server.services.items())
        raise LoadtestError(f"{server.name} failed all {stats.requests} warm-up uploads; see "
                            f"{session_dir}{tails}")


#: Builds a session's server: (session, its Redis URL, its log folder) -> a server not yet started.
ServerFactory = Callable[[Session, str, Path], Server]


@dataclass(frozen=True)
class Options:
    """How every session of a plan runs (the same for all variants)."""

    root: Path  #: the run folder: runs/ and stacks/ go under it
    redis_url: str  #: the stacks' Redis; session i uses its DB number + (i mod redis_db_span)
    warmup_s: float = defaults.WARMUP_S
    ready_timeout_s: float = defaults.READY_TIMEOUT_S
    redis_db_span: int = defaults.REDIS_DB_SPAN
    flush_db: bool = True  #: flush the DB before each stack start (off when the DB is shared)
    project_root: Path = ROOT

    def project_stack(self, session: Session, redis_url: str, log_dir: Path) -> Server:
        """The default server: this project's stack for a :class:`Variant`."""
        return Stack(session.variant, redis_url=redis_url, log_dir=log_dir, project_root=self.project_root,
                     flush=self.flush_db)


def run_session(session: Session, options: Options, progress: Progress,
                make_server: ServerFactory | None = None) -> list[Path]:
    """Start the session's server, warm it up, measure every load, stop it; the run folders."""
    variant = session.variant
    session_dir = options.root / "stacks" / f"{variant.name}-r{session.repeat}"
    redis_url = variant_redis_url(options.redis_url, session.db_offset % options.redis_db_span)
    left, run_dirs = session.phases(options.warmup_s), []

    def phase(text: str) -> None:
        progress.start(f"{variant.name} r{session.repeat}: {text}", left[0])

    def done() -> None:
        progress.finish()
        left.pop(0)

    try:
        phase(f"start ({dict(getattr(variant, 'env', {}))}), wait until it classifies")
        with (make_server or options.project_stack)(session, redis_url, session_dir) as server:
            ready_s = server.wait_ready(options.ready_timeout_s)
            done()
            roots = server.cpu_roots()
            if server.uses_redis and (pid := local_redis_pid(redis_url)) is not None:
                roots["redis"] = pid
            if options.warmup_s > 0:
                users = max(load.users for load in session.loads)
                phase(f"warm-up, {users} users for {options.warmup_s:g}s (dropped)")
                _warm_up(server, users, session_dir, options.warmup_s)
                done()
            meta = {"variant": variant.name, "mode": getattr(variant, "mode", ""),
                    "env": dict(getattr(variant, "env", {})), "workers": getattr(variant, "workers", 1),
                    "repeat": session.repeat, "ready_s": ready_s, "redis_url": redis_url, "cpu_roots": roots,
                    **getattr(variant, "meta", {})}
            for load in session.loads:
                phase(f"measure {load.users} users for {load.duration_s:g}s")
                run_dir = options.root / "runs" / f"{variant.name}-u{load.users:03d}-r{session.repeat}"
                run_dirs.append(measure(server, load, run_dir, roots, meta))
                done()
    finally:
        if left:
            progress.skip(len(left), sum(left))
    return run_dirs


# -- the command line and the plan ---------------------------------------------------------------

def _number_list(text: str, cast: Callable[[str], _N], low: _N, what: str) -> list[_N]:
    try:
        values = [cast(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < low:
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
    return values


def int_list(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (argparse type)."""
    return _number_list(text, int, 1, "positive integers")


def float_list(text: str) -> list[float]:
    """``"0.05,0.5"`` -> ``[0.05, 0.5]`` (argparse type)."""
    return _number_list(text, float, 0.0, "non-negative numbers")


def parse_plan_args(kind: str, description: str, argv: Sequence[str] | None,
                    add_arguments: Callable[[argparse.ArgumentParser], None],
                    fill: Mapping[str, tuple[Any, Any]]) -> tuple[argparse.ArgumentParser,
                                                                  argparse.Namespace]:
    """Every plan's options plus ``add_arguments``'; ``fill`` maps an option left unset to (quick, full)."""
    parser = argparse.ArgumentParser(prog=f"python -m loadtest.{kind}", description=description)
    add = parser.add_argument
    add("--quick", action="store_true", help="a tiny run (seconds per variant), for tests")
    add("--repeats", type=int, default=None, help="run the whole plan this many times")
    add("--warmup", type=float, default=None, help=f"dropped seconds per stack ({defaults.WARMUP_S:g})")
    add("--out", type=Path, default=Path(defaults.OUT), help="report file (default: %(default)s)")
    add("--csv-dir", type=Path, default=None, help=f"folder for CSVs and logs (default: run/{kind}-<time>)")
    add("--redis-url", default=config.value("LOADTEST_REDIS_URL"),
        help="Redis of the stacks, flushed before each start (default: %(default)s)")
    add("--redis-db-span", type=int, default=defaults.REDIS_DB_SPAN,
        help="stack i uses --redis-url's DB number + (i mod span) (default: %(default)s)")
    add("--keep-db", action="store_true", help="do not flush the Redis DB (a shared DB; queues stay apart)")
    add("--ready-timeout", type=float, default=defaults.READY_TIMEOUT_S, help="seconds to wait for /readyz")
    add("--report", type=Path, default=None, metavar="RUN_DIR", help="only rebuild the report from RUN_DIR")
    add_arguments(parser)
    args = parser.parse_args(argv)
    for name, (quick, full) in {"warmup": (1.0, defaults.WARMUP_S), **fill}.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.repeats < 1 or args.warmup < 0 or args.redis_db_span < 1:
        parser.error("--repeats and --redis-db-span must be >= 1, --warmup >= 0")
    if min(getattr(args, name, 1.0) for name in ("duration", "sweep_duration")) <= 0:
        parser.error("--duration and --sweep-duration must be > 0")
    try:
        variant_redis_url(args.redis_url, 0)
        variant_redis_url(args.redis_url, args.redis_db_span - 1)
    except ValueError as exc:
        parser.error(f"--redis-url/--redis-db-span: {exc}")
    return parser, args


@dataclass
class Plan:
    """What one run does: its sessions, what ``plan.json`` says about them, and its report."""

    kind: str  #: ``compare``, ``tune``, ``accelerator``, ``peers``: the run folder's and log's name
    sessions: list[Session]
    record: dict[str, Any]  #: written to plan.json with the fields every plan has; the report reads it
    #: (run folder, report file) -> console lines; ValueError when there is nothing to report.
    report: Callable[[Path, Path], list[str]]
    make_server: ServerFactory | None = None  #: None: this project's stack for each Variant
    #: Run before the sessions, on a quiet machine (the model-only benchmark): run folder -> errors.
    before: Callable[[Path], list[str]] = field(default=lambda _run_dir: [])


def _prepare_run_dir(kind: str, csv_dir: Path | None) -> Path:
    """Create the run folder and log the runner's messages into it (warnings also to the console)."""
    run_dir = csv_dir or Path("run") / f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    handler, console = logging.FileHandler(run_dir / f"{kind}.log"), logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    console.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    root.addHandler(console)
    return run_dir


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def run_plan(plan: Plan, args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """Run ``plan`` with the shared options ``args`` (or, with ``--report``, only rebuild its report);
    0 when every session ran, 1 when some failed, 2 when nothing could be reported."""
    if args.report is not None:
        print(*plan.report(args.report, args.out), sep="\n")
        return 0
    run_dir = _prepare_run_dir(plan.kind, args.csv_dir)
    options = Options(root=run_dir, redis_url=args.redis_url, redis_db_span=args.redis_db_span,
                      flush_db=not args.keep_db, warmup_s=args.warmup, ready_timeout_s=args.ready_timeout)
    errors: list[str] = []
    arguments = sys.argv[1:] if argv is None else argv
    record = {"kind": plan.kind, "command": shlex.join(["python", "-m", f"loadtest.{plan.kind}", *arguments]),
              "started_at": _now(), "machine": describe_machine(ROOT), "errors": errors, "quick": args.quick,
              "warmup_s": args.warmup, "redis_url": args.redis_url, "repeats": args.repeats,
              "variants": list({s.variant.name: {"name": s.variant.name, "mode": getattr(s.variant, "mode",
                                                                                         ""),
                                                 "env": dict(getattr(s.variant, "env", {}))}
                                for s in plan.sessions}.values()), **plan.record}
    (run_dir / "plan.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    phases = [p for s in plan.sessions for p in s.phases(options.warmup_s)]
    progress = Progress(len(phases) + 1, sum(phases) + _BENCHMARK_S)
    print(f"plan: {len(plan.sessions)} server starts, about {format_seconds(sum(phases))}; "
          f"files in {run_dir}",
          file=sys.stderr)
    progress.start("before the sessions (the model-only benchmark, if any)", _BENCHMARK_S)
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
    (run_dir / "plan.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
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


