"""What ``compare`` and ``tune`` share: common options, the run folder, and running a plan.

A plan is a list of sessions (one variant's stack with its loads), run in
order with one progress line per phase; a session that fails is recorded in
``plan.json`` and the plan goes on with the next one.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import ceiling, defaults, machine
from .exceptions import LoadtestError
from .progress import Progress, format_seconds
from .runner import Load, SessionOptions, run_session, session_plan
from .stack import PROJECT_ROOT, Variant, redis_db_url

__all__ = [
    "Session",
    "add_common_arguments",
    "base_plan",
    "check_common_arguments",
    "command_line",
    "float_list",
    "int_list",
    "make_progress",
    "now_iso",
    "prepare_run_dir",
    "run_benchmark_phase",
    "run_sessions",
    "write_plan",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    """One stack start: a variant, its loads, which repeat, and its Redis DB offset."""

    variant: Variant
    loads: tuple[Load, ...]
    repeat: int
    db_offset: int


def int_list(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]`` (argparse type)."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def float_list(text: str) -> list[float]:
    """``"0.05,0.5"`` -> ``[0.05, 0.5]`` (argparse type)."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative numbers, got {text!r}")
    return values


def add_common_arguments(parser: argparse.ArgumentParser, kind: str) -> None:
    """Options both drivers take."""
    parser.add_argument("--quick", action="store_true", help="a tiny run (seconds per variant), for tests")
    parser.add_argument("--repeats", type=int, default=None, help="run the whole plan this many times")
    parser.add_argument(
        "--warmup",
        type=float,
        default=None,
        help=f"seconds of dropped load per stack (default {defaults.WARMUP_S:g})",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(defaults.OUT), help="report file (default: %(default)s)"
    )
    parser.add_argument(
        "--csv-dir",
        type=Path,
        default=None,
        help=f"run folder for CSVs and logs (default: run/{kind}-<time>)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("LOADTEST_REDIS_URL", defaults.REDIS_URL),
        help="Redis of the stacks, flushed before each start (default: %(default)s)",
    )
    parser.add_argument(
        "--redis-db-span",
        type=int,
        default=3,
        help="stack i uses --redis-url's DB number + (i mod span) (default: %(default)s)",
    )
    parser.add_argument(
        "--keep-db",
        action="store_true",
        help="do not flush the Redis DB before each stack start (a shared DB; queues stay apart)",
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=defaults.READY_TIMEOUT_S, help="seconds to wait for /readyz"
    )
    parser.add_argument("--project-root", type=Path, default=PROJECT_ROOT, help=argparse.SUPPRESS)


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad common options before anything starts."""
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.redis_db_span < 1:
        parser.error("--redis-db-span must be >= 1")
    try:
        redis_db_url(args.redis_url, 0)
        redis_db_url(args.redis_url, args.redis_db_span - 1)
    except ValueError as exc:
        parser.error(f"--redis-url/--redis-db-span: {exc}")


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The exact command, for the report."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", "-m", module, *args])


def now_iso() -> str:
    """Current UTC time, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def prepare_run_dir(kind: str, csv_dir: Path | None) -> Path:
    """Create the run folder and log the driver's own messages into it."""
    run_dir = csv_dir or Path("run") / f"{kind}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / f"{kind}.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    console = logging.StreamHandler()
    console.setLevel(logging.WARNING)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(console)
    return run_dir


def write_plan(run_dir: Path, plan: dict[str, Any]) -> None:
    """(Re)write ``plan.json``."""
    (run_dir / "plan.json").write_text(json.dumps(plan, indent=2, default=str) + "\n")


def session_options(args: argparse.Namespace, run_dir: Path) -> SessionOptions:
    """The stack options both drivers take from their common command-line flags."""
    return SessionOptions(
        root=run_dir,
        redis_url=args.redis_url,
        redis_db_span=args.redis_db_span,
        flush_db=not args.keep_db,
        warmup_s=args.warmup,
        ready_timeout_s=args.ready_timeout,
        project_root=args.project_root,
    )


def report_failed(exc: Exception, record: dict[str, Any]) -> int:
    """Say why no report was written, with the plan's errors; the drivers' exit code 2."""
    print(f"no report: {exc}", file=sys.stderr)
    for error in record["errors"]:
        print(f"  {error}", file=sys.stderr)
    return 2


def base_plan(kind: str, command: str, options: SessionOptions) -> dict[str, Any]:
    """The fields every plan.json has."""
    return {
        "kind": kind,
        "command": command,
        "started_at": now_iso(),
        "warmup_s": options.warmup_s,
        "redis_url": options.redis_url,
        "machine": machine.describe(options.project_root),
        "errors": [],
    }


def run_benchmark_phase(
    run_dir: Path,
    sizes: Sequence[int],
    options: SessionOptions,
    progress: Progress,
    plan: dict[str, Any],
    extra_args: Sequence[str] = (),
) -> None:
    """The model-only ceiling, run before any stack so the machine is quiet."""
    progress.start(f"model-only benchmark, batch sizes {','.join(map(str, sizes))}", 60.0)
    found = ceiling.run_benchmark(
        run_dir / "benchmark.json",
        sizes=sizes,
        extra_args=extra_args,
        log_path=run_dir / "benchmark.log",
        project_root=options.project_root,
    )
    progress.finish()
    if found is None:
        plan["errors"].append(
            "model-only benchmark (python -m workers.benchmark) gave no results; see benchmark.log"
        )


def make_progress(
    sessions: Sequence[Session], options: SessionOptions, *, extra_phases: int = 0, extra_seconds: float = 0.0
) -> Progress:
    """A progress counter for the sessions plus ``extra_phases`` the caller runs itself."""
    phases, seconds = extra_phases, extra_seconds
    for s in sessions:
        p, t = session_plan(s.loads, options.warmup_s)
        phases, seconds = phases + p, seconds + t
    progress = Progress(max(phases, 1), max(seconds, 1.0))
    progress.stream.write(
        f"plan: {len(sessions)} stack starts, about {format_seconds(seconds)}; files in {options.root}\n"
    )
    return progress


def run_sessions(
    sessions: Sequence[Session], options: SessionOptions, plan: dict[str, Any], progress: Progress
) -> list[Path]:
    """Run the sessions (after any extra phases the caller ran on ``progress``)."""
    run_dirs: list[Path] = []
    for s in sessions:
        started = time.monotonic()
        try:
            run_dirs += run_session(
                s.variant, s.loads, repeat=s.repeat, db_offset=s.db_offset, options=options, progress=progress
            )
        except (LoadtestError, OSError) as exc:
            message = f"{s.variant.name} repeat {s.repeat}: {exc}".splitlines()[0]
            logger.error("session failed after %.0fs: %s", time.monotonic() - started, exc)
            plan["errors"].append(message)
    return run_dirs
