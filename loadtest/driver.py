"""The run-plan driver ``compare`` and ``tune`` share: sessions of locust runs against fresh stacks.

A session starts a variant's stack, drops a warm-up, measures each load with headless locust
(``--csv``, ``--reset-stats``; ``run.json`` adds CPU times and the worker's histograms) and
kills the stack. A failed session goes into ``plan.json`` and the plan goes on.
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import redis

from common import config
from deploy.stack import ROOT

from . import ceiling, defaults, machine, metrics
from .exceptions import LoadtestError, LocustRunError
from .progress import Progress, format_seconds
from .results import CSV_PREFIX, RUN_JSON, read_locust_stats
from .stack import Stack, Variant, variant_redis_url

__all__ = ["LOCUSTFILE", "Load", "Options", "Plan", "Session", "alternate", "finish_plan", "float_list",
           "int_list", "local_redis_pid", "locust_command", "locust_window", "merge_loads", "now_iso",
           "parse_plan_args", "prepare_run_dir", "run_locust", "run_plan", "run_session", "run_sessions"]

logger = logging.getLogger(__name__)
_N = TypeVar("_N", int, float)

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
#: Planning guesses for the ETA (corrected by the real pace as phases finish).
_STACK_START_S = 15.0
_LOCUST_OVERHEAD_S = 4.0
_BENCHMARK_S = 60.0


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
    """One stack start: a variant, its loads, which repeat, and its Redis DB offset."""

    variant: Variant
    loads: tuple[Load, ...]
    repeat: int
    db_offset: int

    def phases(self, warmup_s: float) -> list[float]:
        """Planned seconds of each phase: start, warm-up (if any), one per load."""
        planned = [_STACK_START_S] + ([warmup_s + 1 + _LOCUST_OVERHEAD_S] if warmup_s > 0 else [])
        return planned + [load.run_time_s + _LOCUST_OVERHEAD_S for load in self.loads]


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


def merge_loads(tagged: Iterable[tuple[int, str]]) -> dict[int, tuple[str, ...]]:
    """(users, role) pairs -> users -> its roles, fewest users first: one run serves every role it can."""
    roles: dict[int, tuple[str, ...]] = {}
    for users, role in tagged:
        roles[users] = roles.get(users, ()) + (role,)
    return dict(sorted(roles.items()))


def alternate(variants: Sequence[Variant], loads: Callable[[Variant], tuple[Load, ...]],
              repeats: int) -> list[Session]:
    """Sessions in A B C A B C order: every variant once per repeat, its Redis DB offset by its place."""
    return [Session(variant, loads(variant), repeat, offset)
            for repeat in range(1, repeats + 1) for offset, variant in enumerate(variants)]


def locust_command(host: str, load: Load, csv_prefix: Path) -> list[str]:
    """The headless locust command line for ``load``."""
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--host", host, "--headless",
            "--users", str(load.users), "--spawn-rate", f"{load.rate:g}", "--run-time", f"{load.run_time_s}s",
            "--stop-timeout", f"{defaults.STOP_TIMEOUT_S:g}", "--reset-stats", "--only-summary",
            "--csv", str(csv_prefix), "PhotoUploader"]


def run_locust(host: str, load: Load, csv_prefix: Path, *, log_path: Path,
               on_start: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run locust to completion (killed if it overstays); its command, exit, wall and CPU time.

    ``on_start`` gets locust's pid as soon as it runs (a CPU sampler tracks it).
    """
    csv_prefix = csv_prefix.resolve()  # locust runs in the run's folder, not ours
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    limit = load.run_time_s + defaults.STOP_TIMEOUT_S + defaults.LOCUST_SLACK_S
    command, start, timed_out = locust_command(host, load, csv_prefix), time.monotonic(), False
    with open(log_path, "wb") as log:
        pid = subprocess.Popen(command, cwd=csv_prefix.parent, stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True).pid
    if on_start is not None:
        on_start(pid)
    # os.wait4 rather than Popen.wait: it also returns the child's resource usage (CPU time);
    # with WNOHANG, polling is the only way to also time it out.
    while not (waited := os.wait4(pid, os.WNOHANG))[0]:
        if time.monotonic() - start > limit:
            logger.warning("locust ran past %.0fs; killing it", limit)
            timed_out = True
            os.killpg(pid, signal.SIGKILL)
            waited = os.wait4(pid, 0)
            break
        time.sleep(0.1)
    _, status, usage = waited
    return {"locust_returncode": os.waitstatus_to_exitcode(status), "locust_timed_out": timed_out,
            "wall_s": time.monotonic() - start, "locust_cpu_s": usage.ru_utime + usage.ru_stime,
            "command": command[1:]}


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
        logger.warning("Redis pid %s (%s) is not a process on this machine: its CPU is not counted",
                       pid, redis_url)
        return None
    return pid


def measure(stack: Stack, load: Load, run_dir: Path, meta: Mapping[str, Any]) -> Path:
    """Measure ``load`` on a ready ``stack``; write locust's CSVs and ``run.json`` into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    before, cpu_before, started_at = metrics.scrape(stack.metrics_url), stack.cpu_seconds(), time.time()
    run = run_locust(stack.url, load, run_dir / CSV_PREFIX, log_path=run_dir / "locust.log")
    stack_cpu = stack.cpu_seconds() - cpu_before
    worker = metrics.delta(before, metrics.scrape(stack.metrics_url))
    record = {
        **meta, "users": load.users, "spawn_rate": load.rate, "duration_s": load.duration_s,
        "run_time_s": load.run_time_s, "roles": list(load.roles), "started_at": started_at, **run,
        "stack_cpu_s": stack_cpu, "worker_metrics": worker.to_json() if worker else None,
    }
    (run_dir / RUN_JSON).write_text(json.dumps(record, indent=2) + "\n")
    if not (run_dir / f"{CSV_PREFIX}_stats.csv").exists():
        raise LocustRunError(f"locust wrote no stats for {run_dir} (exit {run['locust_returncode']}); "
                             "see locust.log")
    return run_dir


def _warm_up(stack: Stack, users: int, session_dir: Path, options: Options) -> None:
    """Load the fresh stack for ``warmup_s`` (results dropped); fail if it answered nothing at all."""
    prefix = session_dir / "warmup"
    run_locust(stack.url, Load(users, options.warmup_s), prefix, log_path=session_dir / "warmup.log")
    try:
        stats = read_locust_stats(Path(f"{prefix}_stats.csv"))
    except (OSError, ValueError) as exc:
        raise LocustRunError(f"warm-up of {stack.variant.name} wrote no stats ({exc}); see {session_dir}") \
            from exc
    if stats.requests and stats.requests == stats.failures:
        raise LoadtestError(f"stack {stack.variant.name} failed all {stats.requests} warm-up uploads; see "
                            f"{session_dir}; worker log:\n{stack.services['worker'].log_tail()}")


def run_session(session: Session, options: Options, progress: Progress) -> list[Path]:
    """Start the session's stack, warm it up, measure every load, stop it; return the run folders."""
    variant = session.variant
    session_dir = options.root / "stacks" / f"{variant.name}-r{session.repeat}"
    redis_url = variant_redis_url(options.redis_url, session.db_offset % options.redis_db_span)
    stack = Stack(variant, redis_url=redis_url,
                  log_dir=session_dir, project_root=options.project_root, flush=options.flush_db)
    left = session.phases(options.warmup_s)
    run_dirs: list[Path] = []

    def phase(text: str) -> None:
        progress.start(f"{variant.name} r{session.repeat}: {text}", left[0])

    def done() -> None:
        progress.finish()
        left.pop(0)

    try:
        with stack:
            phase(f"start stack ({variant.mode}, {dict(variant.env)}), wait for /readyz")
            ready_s = stack.wait_ready(options.ready_timeout_s)
            done()
            if options.warmup_s > 0:
                users = max(load.users for load in session.loads)
                phase(f"warm-up, {users} users for {options.warmup_s:g}s (dropped)")
                _warm_up(stack, users, session_dir, options)
                done()
            meta = {"variant": variant.name, "mode": variant.mode, "env": dict(variant.env),
                    "repeat": session.repeat, "ready_s": ready_s, "redis_url": stack.redis_url}
            for load in session.loads:
                phase(f"measure {load.users} users for {load.duration_s:g}s")
                run_dir = options.root / "runs" / f"{variant.name}-u{load.users:03d}-r{session.repeat}"
                run_dirs.append(measure(stack, load, run_dir, meta))
                done()
    finally:
        if left:
            progress.skip(len(left), sum(left))
    return run_dirs


def run_sessions(sessions: Sequence[Session], options: Options, errors: list[str],
                 progress: Progress) -> list[Path]:
    """Run the sessions in order; a failed one is appended to ``errors`` and the plan goes on."""
    run_dirs: list[Path] = []
    for session in sessions:
        started = time.monotonic()
        try:
            run_dirs += run_session(session, options, progress)
        except (LoadtestError, OSError) as exc:
            logger.error("session failed after %.0fs: %s", time.monotonic() - started, exc)
            errors.append(f"{session.variant.name} repeat {session.repeat}: {exc}".splitlines()[0])
    return run_dirs


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
                    fill: Mapping[str, tuple[Any, Any]],
                    ) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Both drivers' options plus ``add_arguments``'; ``fill`` maps an option left unset to (quick, full)."""
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
    """What one driver run does: its sessions, what ``plan.json`` says about them, and its report."""

    kind: str  #: ``compare`` or ``tune``: the run folder's and log's name
    sessions: list[Session]
    record: dict[str, Any]  #: written to plan.json with the fields every plan has; the report reads it
    #: (run folder, report file) -> console lines; ValueError when there is nothing to report.
    report: Callable[[Path, Path], list[str]]


def prepare_run_dir(kind: str, csv_dir: Path | None) -> Path:
    """Create the run folder and log the driver's own messages into it (warnings also to the console)."""
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


def now_iso() -> str:
    """Now, UTC, to the second, ISO 8601 (a plan's ``started_at``, ``finished_at``)."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def plan_header(kind: str, argv: Sequence[str] | None, errors: list[str],
                project_root: Path = ROOT) -> dict[str, Any]:
    """What every plan's ``plan.json`` starts with: its kind, the command that reruns it, when it
    started, the machine and the (growing) list of errors."""
    arguments = sys.argv[1:] if argv is None else argv
    return {"kind": kind, "command": shlex.join(["python", "-m", f"loadtest.{kind}", *arguments]),
            "started_at": now_iso(), "machine": machine.describe(project_root), "errors": errors}


def run_plan(plan: Plan, args: argparse.Namespace, argv: Sequence[str] | None) -> int:
    """Run ``plan`` with the shared options ``args``; 0 when every session ran, 1 when some failed,
    2 when nothing could be reported."""
    run_dir = prepare_run_dir(plan.kind, args.csv_dir)
    options = Options(root=run_dir, redis_url=args.redis_url, redis_db_span=args.redis_db_span,
                      flush_db=not args.keep_db, warmup_s=args.warmup, ready_timeout_s=args.ready_timeout)
    variants = list({s.variant.name: s.variant for s in plan.sessions}.values())
    errors: list[str] = []
    record = {
        **plan_header(plan.kind, argv, errors, options.project_root),
        "warmup_s": options.warmup_s, "redis_url": options.redis_url,
        "variants": [{"name": v.name, "mode": v.mode, "env": dict(v.env)} for v in variants],
        "repeats": args.repeats, **plan.record,
    }
    plan_json = run_dir / "plan.json"
    plan_json.write_text(json.dumps(record, indent=2, default=str) + "\n")

    sizes = plan.record.get("benchmark_sizes")  # the model-only ceiling, measured first
    phases = [p for s in plan.sessions for p in s.phases(options.warmup_s)] + [_BENCHMARK_S] * bool(sizes)
    progress = Progress(max(len(phases), 1), max(sum(phases), 1.0))
    progress.stream.write(f"plan: {len(plan.sessions)} stack starts, about {format_seconds(sum(phases))}; "
                          f"files in {run_dir}\n")
    if sizes:  # before any stack, so the machine is quiet; --quick: fewer timed runs, seconds too
        progress.start(f"model-only benchmark, batch sizes {','.join(map(str, sizes))}", _BENCHMARK_S)
        if ceiling.run_benchmark(run_dir / "benchmark.json", sizes=sizes, log_path=run_dir / "benchmark.log",
                                 extra_args=["--repeats", "3", "--warmup", "1"] if args.quick else [],
                                 project_root=options.project_root) is None:
            errors.append("model-only benchmark (python -m workers.benchmark) gave no results; "
                          "see benchmark.log")
        progress.finish()
    run_sessions(plan.sessions, options, errors, progress)
    return finish_plan(run_dir, record, errors, progress, plan.report, args.out)


def finish_plan(run_dir: Path, record: dict[str, Any], errors: Sequence[str], progress: Progress,
                report: Callable[[Path, Path], list[str]], out: Path) -> int:
    """Write ``plan.json`` (with ``finished_at``), build and print the report; the exit status:
    0 when every session ran, 1 when some failed, 2 when nothing could be reported."""
    record["finished_at"] = now_iso()
    (run_dir / "plan.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    try:
        lines = report(run_dir, out)
    except ValueError as exc:
        print(f"no report: {exc}", *(f"  {e}" for e in errors), sep="\n", file=sys.stderr)
        return 2
    print(f"done in {format_seconds(progress.elapsed())}; report: {out}; runs: {run_dir}", *lines,
          sep="\n")
    for error in errors:
        print(f"problem: {error}", file=sys.stderr)
    return 1 if errors else 0
