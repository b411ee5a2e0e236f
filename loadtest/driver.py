"""The one runner of every plan: variants × loads × repeats, alternated (A B C A B C) so a drift of
the machine falls on all of them. Each session starts a fresh server, drops a warm-up and measures
each load with headless locust while the CPU is sampled; the reports read the run folder alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psutil
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
SAMPLE_S = 0.25  #: seconds between CPU samples while locust runs
HISTOGRAMS = (BATCH_SIZE_METRIC, BATCH_WAIT_METRIC, FORWARD_METRIC)


class Sampler:
    """CPU seconds of named process trees and of the machine, sampled on call. A tree sums user + system
    seconds of every process ever seen in it, by (pid, start time), each at its highest reading: one that
    exits keeps what it used, and a reaped child (also in its parent's children times) counts once."""

    def __init__(self, roots: Mapping[str, int]) -> None:
        self.roots, self.times = dict(roots), list[float]()
        self.series: dict[str, list[float]] = {name: [] for name in [MACHINE, *self.roots]}  #: seconds so far
        self._seen: dict[str, dict[tuple[int, float], float]] = {name: {} for name in self.roots}

    def sample(self) -> None:
        """One scan of the process table serves every tree (a walk per root would rescan it each time)."""
        cpu = psutil.cpu_times()  # busy: all but idle and iowait
        self.series[MACHINE].append(cpu.user + cpu.nice + cpu.system + cpu.irq + cpu.softirq + cpu.steal)
        procs = {p.pid: p.info for p in psutil.process_iter(["ppid", "create_time", "cpu_times"])}
        children: defaultdict[int, list[int]] = defaultdict(list)
        for pid, info in procs.items():
            children[info["ppid"]].append(pid)
        for name, root in self.roots.items():
            seen, todo = self._seen[name], [root] if root in procs else []
            while todo:
                info = procs[pid := todo.pop()]
                todo += children[pid]
                if (times := info["cpu_times"]) is not None:  # None: it exited while read
                    key = (pid, info["create_time"])
                    seen[key] = max(seen.get(key, 0.0), times.user + times.system)
            self.series[name].append(sum(seen.values()))
        self.times.append(time.time())

    def window(self, start: float, end: float) -> dict[str, float]:
        """Each tree's CPU seconds from ``start`` to ``end``: linear between samples, flat outside."""
        used = {}
        for name, series in self.series.items():
            before, after = np.interp([start, end], self.times, series)
            used[name] = max(float(after - before), 0.0)
        return used


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


def _hms(seconds: float) -> str:
    return str(timedelta(seconds=round(max(seconds, 0.0))))


@dataclass
class Progress:
    """A stderr line as each phase starts: elapsed, and the time left at the pace of the phases done."""

    total: int  #: phases planned; a failed session's that will not run are taken off
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def phase(self, label: str) -> None:
        eta = _hms(self.elapsed() / self.done * (self.total - self.done)) if self.done else "?"
        print(f"[{self.done + 1:>{len(str(self.total))}}/{self.total} | elapsed {_hms(self.elapsed())} | ETA "
              f"{eta}] {label}", file=sys.stderr, flush=True)
        self.done += 1


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
    return pid if psutil.pid_exists(pid) else None  # else another host or container


def scrape_metrics(urls: Sequence[str]) -> defaultdict[tuple[str, str], float] | None:
    """Every worker's :data:`HISTOGRAMS`: (name, ``count`` or ``sum``) -> over every label set and worker;
    None (logged) when there is none or one does not answer."""
    total: defaultdict[tuple[str, str], float] = defaultdict(float)
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=3.0) as response:
                text = response.read().decode("utf-8", errors="replace")
            families = [family for family in text_string_to_metric_families(text)
                        if family.type == "histogram" and family.name in HISTOGRAMS]
        except (OSError, ValueError) as exc:
            logger.warning("no worker metrics from %s: %s", url, exc)
            return None
        for family in families:
            for sample in family.samples:
                if (part := sample.name.removeprefix(f"{family.name}_")) in ("count", "sum"):
                    total[family.name, part] += sample.value
    return total if urls else None


def measure(server: Server, load: Load, run_dir: Path, roots: Mapping[str, int],
            meta: Mapping[str, Any]) -> None:
    """Run locust on ``load`` (killed if it overstays), sampling the CPU of it and of ``roots``; write its
    CSVs and ``run.json`` (CPU per tree over locust's window, the workers' histograms' difference)."""
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", server.url, "--headless",
            "--users", str(load.users), "--spawn-rate", f"{load.rate:g}", "--run-time", f"{load.run_time_s}s",
            "--stop-timeout", f"{STOP_TIMEOUT_S:g}", "--reset-stats", "--only-summary",
            "--csv", str(run_dir / CSV_PREFIX), "PhotoUploader"]
    before, started_at, start, code = scrape_metrics(server.metrics_urls), time.time(), time.monotonic(), None
    limit = load.run_time_s + LOCUST_SLACK_S
    with Process(argv, log_path=run_dir / "locust.log", cwd=run_dir, name="locust", grace=5.0) as locust:
        sampler = Sampler({**roots, "locust": locust.pid})
        while code is None and time.monotonic() - start < limit:
            sampler.sample()
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = locust.wait(SAMPLE_S)
        sampler.sample()
        if code is None:
            logger.warning("locust ran past %.0fs; killing it", limit)
    run = {"locust_returncode": code, "locust_timed_out": code is None, "wall_s": time.monotonic() - start,
           "command": argv[1:]}
    after = scrape_metrics(server.metrics_urls)
    if not (run_dir / f"{CSV_PREFIX}_stats.csv").exists():
        raise LoadtestError(f"no locust stats in {run_dir} (exit {code}): see locust.log")
    span = locust_window((run_dir / "locust.log").read_text(errors="replace"))
    if span is None:
        logger.warning("%s: no measured window in locust.log; using the last %.0fs", run_dir, load.duration_s)
        span = (sampler.times[-1] - load.duration_s, sampler.times[-1])
    worker = None if before is None or after is None else {"histograms": {
        name: {part: after[name, part] - before[name, part] for part in ("count", "sum")}
        for name in sorted({name for name, _ in after})}}
    record = {**meta, "users": load.users, "spawn_rate": load.rate, "duration_s": load.duration_s,
              "run_time_s": load.run_time_s, "roles": list(load.roles), "started_at": started_at, **run,
              "cpu_window": list(span), "cpu_window_s": span[1] - span[0],
              "cpu_s": sampler.window(*span), "worker_metrics": worker}
    (run_dir / RUN_JSON).write_text(json.dumps(record, indent=2) + "\n")


#: Builds a session's server: (session, its Redis URL, its log folder) -> a server not yet started.
ServerFactory = Callable[[Session, str, Path], Server]


def run_session(session: Session, args: argparse.Namespace, root: Path, progress: Progress,
                make_server: ServerFactory | None) -> None:
    """Start the session's server (by default this project's stack), warm it up, measure every load."""
    variant = session.variant
    session_dir = root / "stacks" / f"{variant.name}-r{session.repeat}"
    redis_url = variant_redis_url(args.redis_url, session.db_offset % args.redis_db_span)
    env = dict(getattr(variant, "env", {}))

    def phase(text: str) -> None:
        progress.phase(f"{variant.name} r{session.repeat}: {text}")

    phase(f"start ({env}), wait until it classifies")
    make = make_server or (lambda s, url, log_dir: Stack(s.variant, redis_url=url, log_dir=log_dir,
                                                          flush=not args.keep_db))
    with make(session, redis_url, session_dir) as server:
        ready_s = server.wait_ready(args.ready_timeout)
        roots = server.cpu_roots()
        if server.uses_redis and (pid := _local_redis_pid(redis_url)) is not None:
            roots["redis"] = pid
        meta = {"variant": variant.name, "mode": getattr(variant, "mode", ""), "env": env,
                "workers": getattr(variant, "workers", 1), "repeat": session.repeat, "ready_s": ready_s,
                "redis_url": redis_url, "cpu_roots": roots, **getattr(variant, "meta", {})}
        if args.warmup > 0:  # a load like the others, in the session's folder: no report reads it
            users = max(load.users for load in session.loads)
            phase(f"warm-up, {users} users for {args.warmup:g}s (dropped)")
            measure(server, Load(users, args.warmup), session_dir / "warmup", roots, meta)
            stats = read_locust_stats(session_dir / "warmup" / f"{CSV_PREFIX}_stats.csv")
            if stats.requests and stats.requests == stats.failures:
                raise LoadtestError(f"{server.name} failed all {stats.requests} warm-up uploads; see "
                                    f"{session_dir}{server.log_tails()}")
        for load in session.loads:
            phase(f"measure {load.users} users for {load.duration_s:g}s")
            run_dir = root / "runs" / f"{variant.name}-u{load.users:03d}-r{session.repeat}"
            measure(server, load, run_dir, roots, meta)


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
        return run_plan(*self.parse(argv), argv)


def _prepare_run_dir(kind: str, csv_dir: Path | None) -> Path:
    """Create the run folder; log the runner's messages into it (warnings also to the console)."""
    run_dir = csv_dir or Path("run") / f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    console, root = logging.StreamHandler(), logging.getLogger()
    console.setLevel(logging.WARNING)
    root.setLevel(logging.INFO)
    for handler in (logging.FileHandler(run_dir / f"{kind}.log"), console):
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    return run_dir


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def run_plan(args: argparse.Namespace, plan: Plan, argv: Sequence[str] | None) -> int:
    """Run ``plan`` (``--report``: only rebuild its report); 0 when every session ran, 1 when some
    failed, 2 when nothing could be reported."""
    if args.report is not None:
        print(*plan.report(args.report, args.out), sep="\n")
        return 0
    run_dir = _prepare_run_dir(plan.kind, args.csv_dir)
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
    phases = [1 + (args.warmup > 0) + len(s.loads) for s in plan.sessions]  # start, warm-up, loads
    progress = Progress(1 + sum(phases))
    print(f"plan: {len(plan.sessions)} server starts, {progress.total} phases; in {run_dir}", file=sys.stderr)
    progress.phase("before the sessions (the model-only benchmark, if any)")
    errors += plan.before(run_dir)
    for session, planned in zip(plan.sessions, phases):
        started, done = time.monotonic(), progress.done + planned
        try:
            run_session(session, args, run_dir, progress, plan.make_server)
        except (LoadtestError, OSError, subprocess.SubprocessError) as exc:
            logger.error("session failed after %.0fs: %s", time.monotonic() - started, exc)
            errors.append(f"{session.variant.name} repeat {session.repeat}: {exc}".splitlines()[0])
        progress.total -= done - progress.done  # the phases a failed session did not run
    record["finished_at"] = _now()
    write_record()
    try:
        lines = plan.report(run_dir, args.out)
    except ValueError as exc:
        print(f"no report: {exc}", *(f"  {e}" for e in errors), sep="\n", file=sys.stderr)
        return 2
    print(f"done in {_hms(progress.elapsed())}; report: {args.out}; runs: {run_dir}", *lines, sep="\n")
    for error in errors:
        print(f"problem: {error}", file=sys.stderr)
    return 1 if errors else 0
