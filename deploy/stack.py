"""Start the project's services: one command line each, one process group each.

What ``make up`` (through ``deploy/run.sh`` under supervisord), the load-test
driver and the test fixtures share: :func:`command` (each service's command
line), :func:`free_port`, :func:`wait_ready` (poll a URL until it answers 200)
and :class:`Process` (a command in its own process group, logging to a file,
stopped with :func:`kill_group`: SIGTERM to the group, SIGKILL to whatever is
left after a grace period).

``python -m deploy.stack exec NAME`` replaces itself with NAME's command
(supervisord's programs; for ``redis`` it first writes the config file
holding ``REDIS_PASSWORD``, mode 0600: :func:`write_redis_config`; ``exec
worker --index N`` is worker N of ``WORKERS`` on one host: its own Celery node
name and ``/metrics`` port, :func:`worker_metrics_port`); ``command NAME``
prints it; ``free-port`` prints a free TCP port. Standard
library only (and ``common.config``, which is too), so the scripts can use it
before the virtualenv exists.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from common.config import value
from deploy import redisurl

__all__ = [
    "ROOT",
    "SERVICES",
    "WEB_TIER",
    "NotReadyError",
    "Probe",
    "Process",
    "ServiceExitedError",
    "StackError",
    "command",
    "free_port",
    "kill_group",
    "probe",
    "redis_config",
    "wait_ready",
    "wait_until",
    "worker_metrics_port",
    "write_redis_config",
]

#: The repository root: every service runs from here.
ROOT = Path(__file__).resolve().parent.parent
#: The services a stack is made of, in start order.
SERVICES = ("redis", "worker", "web", "flower")
#: What answers HTTP, in start order: launchers start these with one ``RUN_DIR`` and ``WEB_PORT``.
WEB_TIER = ("web",)
#: The local Redis' config file in ``RUN_DIR`` (:func:`write_redis_config`).
REDIS_CONFIG = "redis.conf"
#: Bytes of a non-200 body kept as the reason (``/readyz`` gives its reason there).
_DETAIL_BYTES = 160


class StackError(RuntimeError):
    """A service did not come up."""


class NotReadyError(StackError):
    """The timeout passed before the service answered."""


class ServiceExitedError(StackError):
    """A service exited (or its supervisor gave up on it): waiting longer cannot help."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


#: Addresses that only this machine reaches.
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class UnsafeListenerError(ValueError):
    """A service would listen beyond loopback without authentication."""


def command(name: str, env: Mapping[str, str] | None = None, python: str = sys.executable, *,
            index: int | None = None) -> list[str]:
    """Service ``name``'s command line, run from :data:`ROOT` with ``env``.

    gunicorn binds ``BIND_HOST:WEB_PORT`` from its config file; Flower reads
    ``FLOWER_BASIC_AUTH`` from its environment, so no credential is ever on a
    command line (where ``ps`` shows it). ``index`` (worker only) is one of
    several workers on this host: Celery node ``worker-<index>@<host>``, as two
    nodes of one name on one broker confuse ``inspect`` and Flower.
    """
    if index is not None and (name != "worker" or index < 0):
        raise ValueError(f"index={index!r} for {name!r}: only the worker takes an index, from 0")
    if name == "web":
        return [python, "-m", "gunicorn", "-c", "webapp/gunicorn.conf.py", "webapp.wsgi:app"]
    if name == "worker":
        # %h: Celery puts in the host name.
        return [python, "-m", "workers", *([f"--hostname=worker-{index}@%h"] if index is not None else [])]
    if name == "flower":
        address = value("BIND_HOST", env)
        if address not in _LOOPBACK and not value("FLOWER_BASIC_AUTH", env):
            raise UnsafeListenerError(
                f"Flower would listen on {address} without a login: set FLOWER_BASIC_AUTH=user:password "
                "in its environment, or BIND_HOST=127.0.0.1")
        return [python, "-m", "celery", "-A", "workers", "flower",
                f"--port={value('FLOWER_PORT', env)}", f"--address={address}"]
    if name == "redis":
        port = redisurl.parse(value("REDIS_URL", env)).port
        run_dir = ROOT / value("RUN_DIR", env)
        # A queue that survives a restart: the AOF, fsynced every second. Full at
        # REDIS_MAXMEMORY, it refuses writes (noeviction) instead of dropping tasks.
        # The password, if any, is in the config file (redis_config), not here.
        return ["redis-server", str(run_dir / REDIS_CONFIG), "--bind", "127.0.0.1", "--port", str(port),
                "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                "--maxmemory", value("REDIS_MAXMEMORY", env), "--maxmemory-policy", "noeviction",
                "--dir", str(run_dir)]
    raise ValueError(f"unknown service {name!r}: use one of {', '.join(SERVICES)}")


def worker_metrics_port(index: int, env: Mapping[str, str] | None = None) -> int:
    """Worker ``index``'s ``/metrics`` port: ``WORKER_METRICS_PORT`` + ``index`` (0 stays 0: off)."""
    if index < 0:
        raise ValueError(f"worker index must be >= 0, got {index}")
    base: int = value("WORKER_METRICS_PORT", env)
    if base == 0:
        return 0
    if base + index > 65535:
        raise ValueError(f"WORKER_METRICS_PORT={base} + worker {index} is past 65535: use a lower base port")
    return base + index


def redis_config(env: Mapping[str, str] | None = None) -> str:
    """The local Redis' config file: ``requirepass`` when ``REDIS_PASSWORD`` is set."""
    password = value("REDIS_PASSWORD", env)
    if password is None:
        return "# REDIS_PASSWORD is unset: no password\n"
    if any(char in password for char in "\r\n\0"):
        raise ValueError("REDIS_PASSWORD must be one line")
    quoted = password.replace("\\", "\\\\").replace('"', '\\"')
    return f'requirepass "{quoted}"\n'


def write_redis_config(env: Mapping[str, str] | None = None) -> Path:
    """Write :func:`redis_config` to ``RUN_DIR`` with mode 0600 (it may hold the password); its path."""
    path = ROOT / value("RUN_DIR", env) / REDIS_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a new file, so the mode below is the one it is created with
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(redis_config(env))
    return path


# -- readiness ----------------------------------------------------------------

@dataclass(frozen=True)
class Probe:
    """One GET: the HTTP status (None when nothing answered) and a short reason."""

    status: int | None
    detail: str

    @property
    def ready(self) -> bool:
        return self.status == 200

    def __str__(self) -> str:
        if self.status is None:
            return f"no answer ({self.detail})"
        return f"{self.status} {self.detail}".strip()


def probe(url: str, timeout: float = 3.0) -> Probe:
    """GET ``url`` once."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return Probe(response.status, "")
    except urllib.error.HTTPError as exc:
        body = exc.read(_DETAIL_BYTES).decode("utf-8", "replace")
        return Probe(exc.code, " ".join(body.split()))
    except (urllib.error.URLError, OSError) as exc:
        return Probe(None, str(getattr(exc, "reason", exc)))


def wait_until(
    check: Callable[[], str | None],
    timeout: float,
    *,
    interval: float = 1.0,
    give_up: Callable[[], str | None] | None = None,
    progress: Callable[[str], None] | None = None,
    report_every: float = 5.0,
) -> float:
    """Call ``check`` (None: ready, else why not) until ready; return the seconds it took.

    ``give_up`` (None: keep waiting, else why not) is asked before each check:
    :class:`ServiceExitedError` with its reason. :class:`NotReadyError` with the
    last reason once ``timeout`` passes (``timeout=0`` checks once).
    ``progress`` gets a line every ``report_every`` seconds.
    """
    start = time.monotonic()
    next_report = start
    while True:
        stop = give_up() if give_up else None
        if stop:
            raise ServiceExitedError(stop)
        reason = check()
        elapsed = time.monotonic() - start
        if reason is None:
            return elapsed
        if elapsed >= timeout:
            raise NotReadyError(f"not ready after {timeout:.0f}s: {reason}")
        if progress and time.monotonic() >= next_report:
            progress(f"  waiting {elapsed:3.0f}s/{timeout:.0f}s: {reason}")
            next_report += report_every
        time.sleep(min(interval, max(0.0, timeout - elapsed)))  # polling: there is nothing to block on


def wait_ready(url: str, timeout: float, **options: object) -> float:
    """:func:`wait_until` GET ``url`` answers 200; ``options`` as there."""
    def check() -> str | None:
        result = probe(url)
        return None if result.ready else f"{url}: {result}"
    return wait_until(check, timeout, **options)  # type: ignore[arg-type]


# -- processes ----------------------------------------------------------------

def kill_group(proc: subprocess.Popen[bytes], grace: float = 15.0) -> int:
    """SIGTERM the process group ``proc`` leads, wait ``grace`` s, SIGKILL what is left; its exit code."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    # The leader may be gone while its children (pool processes, gunicorn workers) linger.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.wait()


_P = TypeVar("_P", bound="Process")


class Process:
    """One command in a process group of its own (a new session), its output in ``log_path``."""

    def __init__(self, argv: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None,
                 cwd: Path = ROOT, name: str | None = None, grace: float = 15.0) -> None:
        self.argv = list(argv)
        self.env = dict(os.environ) if env is None else dict(env)
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.name = name or Path(self.argv[0]).name
        #: Seconds :meth:`stop` lets the group finish after SIGTERM.
        self.grace = grace
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self: _P) -> _P:
        """Start the command (once); its output is appended to the log."""
        if self.proc is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.proc.pid

    def exited(self) -> str | None:
        """None while it runs; else its exit code and last log lines (a ``give_up`` for waits)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return f"{self.name} exited with {self.proc.returncode}; last log lines:\n{self.log_tail()}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the whole process group."""
        os.killpg(self.pid, signum)

    def wait(self, timeout: float | None = None) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """:func:`kill_group`, if it was started."""
        if self.proc is not None:
            kill_group(self.proc, self.grace)

    def __enter__(self: _P) -> _P:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.stack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in ("exec", "command"):
        verb_parser = sub.add_parser(verb)
        verb_parser.add_argument("service", choices=SERVICES)
        verb_parser.add_argument("--index", type=int, default=None,
                                 help="worker only: which of WORKERS on this host (process_num)")
        verb_parser.add_argument("--model", default=None,
                                 help="worker only: the repository model it serves (deploy.models)")
    sub.add_parser("free-port")
    args = parser.parse_args(argv)
    if args.verb == "free-port":
        print(free_port())
        return 0
    if args.model is not None and args.service != "worker":
        parser.error("--model is for the worker only")
    try:
        argv = command(args.service, index=args.index)
        port = None if args.index is None else worker_metrics_port(args.index)
    except UnsafeListenerError as exc:
        print(f"deploy.stack: refusing to start {args.service}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        parser.error(str(exc))
    if args.verb == "command":
        print(shlex.join(argv))
        return 0
    os.chdir(ROOT)
    if args.service == "redis":
        write_redis_config()
    if port is not None:  # read by the worker's own settings (common.config), as any other variable
        os.environ["WORKER_METRICS_PORT"] = str(port)
    if args.model is not None:  # a repository model: MODEL_WEIGHTS is a built-in architecture's
        os.environ["MODEL"] = args.model
        os.environ["MODEL_WEIGHTS"] = ""
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    sys.exit(main())
