"""Run locust against a started stack and record one measurement per run.

Shared by ``compare`` and ``tune``: :func:`run_session` starts one variant's
stack, waits for /readyz, applies a warm-up load that is dropped, then measures
each requested load with a headless locust subprocess (``--csv`` into the
run's folder, ``--reset-stats`` so the ramp-up is not measured) and kills the
stack. Around each run it takes the stack's CPU time, the load generator's CPU
time (``os.wait4`` resource usage of the locust process) and the worker's
Prometheus metrics, and writes them to ``run.json`` next to locust's CSVs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import defaults, metrics
from .exceptions import LoadtestError, LocustRunError
from .progress import Progress
from .results import CSV_PREFIX, RUN_JSON, read_locust_stats
from .stack import PROJECT_ROOT, Stack, Variant, redis_db_url

__all__ = [
    "LOCUSTFILE",
    "Load",
    "LocustRun",
    "SessionOptions",
    "locust_command",
    "measure",
    "run_locust",
    "run_session",
    "session_plan",
]

logger = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
#: Planning guesses for the ETA (corrected by the real pace as phases finish).
_STACK_START_S = 15.0
_LOCUST_OVERHEAD_S = 4.0


@dataclass(frozen=True)
class Load:
    """One locust run: closed-loop users for a measured duration."""

    users: int
    duration_s: float
    spawn_rate: float | None = None  #: users/s; None starts every user within about a second
    roles: tuple[str, ...] = ()  #: which parts of the plan this run serves

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"users must be >= 1, got {self.users}")
        if self.duration_s <= 0:
            raise ValueError(f"duration_s must be > 0, got {self.duration_s}")
        if self.spawn_rate is not None and self.spawn_rate <= 0:
            raise ValueError(f"spawn_rate must be > 0, got {self.spawn_rate}")

    @property
    def rate(self) -> float:
        """Spawn rate passed to locust."""
        return self.spawn_rate or float(self.users)

    @property
    def run_time_s(self) -> int:
        """locust --run-time: the ramp-up (reset away by --reset-stats) plus the measured duration."""
        return math.ceil(self.users / self.rate + self.duration_s)


@dataclass(frozen=True)
class LocustRun:
    """How a locust subprocess went."""

    returncode: int
    wall_s: float
    cpu_s: float  #: user + system CPU of locust (and any process it forked)
    timed_out: bool


@dataclass(frozen=True)
class SessionOptions:
    """How every session of a plan runs (the same for all variants)."""

    root: Path  #: the run folder: runs/ and stacks/ go under it
    redis_url: str = defaults.REDIS_URL
    warmup_s: float = defaults.WARMUP_S
    ready_timeout_s: float = defaults.READY_TIMEOUT_S
    stop_timeout_s: float = defaults.STOP_TIMEOUT_S
    redis_db_span: int = 3  #: variant i uses DB number + (i mod span)
    flush_db: bool = True  #: flush the DB before each stack start (off when the DB is shared)
    user_class: str = "PhotoUploader"
    project_root: Path = PROJECT_ROOT
    extra_env: Mapping[str, str] | None = None


def locust_command(
    host: str,
    load: Load,
    csv_prefix: Path,
    *,
    user_class: str = "PhotoUploader",
    stop_timeout_s: float = defaults.STOP_TIMEOUT_S,
    python: str = sys.executable,
) -> list[str]:
    """The headless locust command line for ``load``."""
    return [
        python,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--host",
        host,
        "--headless",
        "--users",
        str(load.users),
        "--spawn-rate",
        f"{load.rate:g}",
        "--run-time",
        f"{load.run_time_s}s",
        "--stop-timeout",
        f"{stop_timeout_s:g}",
        "--reset-stats",
        "--only-summary",
        "--csv",
        str(csv_prefix),
        user_class,
    ]


def run_locust(
    host: str,
    load: Load,
    csv_prefix: Path,
    *,
    log_path: Path,
    user_class: str = "PhotoUploader",
    stop_timeout_s: float = defaults.STOP_TIMEOUT_S,
    slack_s: float = defaults.LOCUST_SLACK_S,
) -> LocustRun:
    """Run locust to completion (killing it if it overstays) and return its exit, wall and CPU time."""
    csv_prefix = csv_prefix.resolve()  # locust runs in the run's folder, not ours
    cmd = locust_command(host, load, csv_prefix, user_class=user_class, stop_timeout_s=stop_timeout_s)
    csv_prefix.parent.mkdir(parents=True, exist_ok=True)
    limit = load.run_time_s + stop_timeout_s + slack_s
    start = time.monotonic()
    timed_out = False
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=csv_prefix.parent,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        # os.wait4 rather than Popen.wait: it also returns the child's resource usage (CPU time).
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > limit:
                logger.warning("locust ran past %.0fs; killing it", limit)
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return LocustRun(proc.returncode, time.monotonic() - start, usage.ru_utime + usage.ru_stime, timed_out)


def measure(
    stack: Stack, load: Load, run_dir: Path, *, meta: Mapping[str, Any], options: SessionOptions
) -> Path:
    """Measure ``load`` on a ready ``stack``; write locust's CSVs and ``run.json`` into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    prefix = run_dir / CSV_PREFIX
    before = metrics.scrape(stack.metrics_url)
    cpu_before = stack.cpu_seconds()
    started_at = time.time()
    run = run_locust(
        stack.url,
        load,
        prefix,
        log_path=run_dir / "locust.log",
        user_class=options.user_class,
        stop_timeout_s=options.stop_timeout_s,
    )
    stack_cpu = stack.cpu_seconds() - cpu_before
    worker = metrics.delta(before, metrics.scrape(stack.metrics_url))
    record = {
        **meta,
        "users": load.users,
        "spawn_rate": load.rate,
        "duration_s": load.duration_s,
        "run_time_s": load.run_time_s,
        "roles": list(load.roles),
        "started_at": started_at,
        "locust_returncode": run.returncode,
        "locust_timed_out": run.timed_out,
        "wall_s": run.wall_s,
        "locust_cpu_s": run.cpu_s,
        "stack_cpu_s": stack_cpu,
        "worker_metrics": worker.to_json() if worker else None,
        "command": locust_command(
            stack.url, load, prefix, user_class=options.user_class, stop_timeout_s=options.stop_timeout_s
        )[1:],
    }
    (run_dir / RUN_JSON).write_text(json.dumps(record, indent=2) + "\n")
    if not (run_dir / f"{CSV_PREFIX}_stats.csv").exists():
        raise LocustRunError(f"locust wrote no stats for {run_dir} (exit {run.returncode}); see locust.log")
    return run_dir


def _phases(loads: Sequence[Load], warmup_s: float) -> list[float]:
    """Planned seconds of each phase of a session: start, warm-up (if any), one per load."""
    planned = [_STACK_START_S]
    if warmup_s > 0:
        planned.append(warmup_s + 1 + _LOCUST_OVERHEAD_S)
    planned.extend(load.run_time_s + _LOCUST_OVERHEAD_S for load in loads)
    return planned


def session_plan(loads: Sequence[Load], warmup_s: float) -> tuple[int, float]:
    """(phases, planned seconds) of one session, for the progress line's ETA."""
    planned = _phases(loads, warmup_s)
    return len(planned), sum(planned)


def _warm_up(stack: Stack, users: int, session_dir: Path, options: SessionOptions) -> None:
    """Load the fresh stack for ``warmup_s`` (results dropped); fail if it answered nothing at all."""
    load = Load(users, options.warmup_s)
    prefix = session_dir / "warmup"
    run_locust(
        stack.url,
        load,
        prefix,
        log_path=session_dir / "warmup.log",
        user_class=options.user_class,
        stop_timeout_s=options.stop_timeout_s,
    )
    try:
        stats = read_locust_stats(Path(f"{prefix}_stats.csv"))
    except (OSError, ValueError) as exc:
        raise LocustRunError(
            f"warm-up of {stack.variant.name} wrote no stats ({exc}); see {session_dir}"
        ) from exc
    if stats.requests and stats.requests == stats.failures:
        raise LoadtestError(
            f"stack {stack.variant.name} failed all {stats.requests} warm-up uploads; "
            f"see {session_dir}; worker log:\n{stack.log_tail('worker')}"
        )


def run_session(
    variant: Variant,
    loads: Sequence[Load],
    *,
    repeat: int,
    db_offset: int,
    options: SessionOptions,
    progress: Progress | None = None,
    meta: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Start ``variant``'s stack, warm it up, measure every load, stop it; return the run folders."""
    if not loads:
        raise ValueError("run_session needs at least one Load")
    label = f"{variant.name} r{repeat}"
    session_dir = options.root / "stacks" / f"{variant.name}-r{repeat}"
    stack = Stack(
        variant,
        redis_url=redis_db_url(options.redis_url, db_offset % options.redis_db_span),
        log_dir=session_dir,
        project_root=options.project_root,
        extra_env=options.extra_env,
        flush=options.flush_db,
    )
    planned = iter(_phases(loads, options.warmup_s))
    left = list(_phases(loads, options.warmup_s))
    run_dirs: list[Path] = []

    def phase(text: str) -> None:
        seconds = next(planned)
        left.pop(0)
        if progress:
            progress.start(f"{label}: {text}", seconds)

    def finish() -> None:
        if progress:
            progress.finish()

    try:
        with stack:
            phase(f"start stack ({variant.mode}, {dict(variant.env)}), wait for /readyz")
            ready_s = stack.wait_ready(options.ready_timeout_s)
            finish()
            if options.warmup_s > 0:
                users = max(load.users for load in loads)
                phase(f"warm-up, {users} users for {options.warmup_s:g}s (dropped)")
                _warm_up(stack, users, session_dir, options)
                finish()
            for load in loads:
                phase(f"measure {load.users} users for {load.duration_s:g}s")
                run_dir = options.root / "runs" / f"{variant.name}-u{load.users:03d}-r{repeat}"
                run_meta = {
                    **(meta or {}),
                    "variant": variant.name,
                    "mode": variant.mode,
                    "env": dict(variant.env),
                    "repeat": repeat,
                    "ready_s": ready_s,
                    "redis_url": stack.redis_url,
                }
                run_dirs.append(measure(stack, load, run_dir, meta=run_meta, options=options))
                finish()
    finally:
        if progress and left:
            progress.skip(len(left), sum(left))
    return run_dirs
