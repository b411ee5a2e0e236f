"""Start the project's services: one command line each, one process group each.
Shared by ``make up``, compose, the load tests and the tests; standard library and ``common.config`` only."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
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
from string import Template
from typing import Self

from common.config import WebSettings, load, value
from deploy import redisurl

__all__ = ["ROOT", "SERVICES", "WEB_TIER", "NotReadyError", "Probe", "Process", "ServiceExitedError",
           "StackError", "UnsafeListenerError", "command", "free_port", "nginx_config", "probe",
           "redis_config", "wait_ready", "wait_until", "web_upstream", "worker_metrics_port",
           "write_redis_config"]

#: The repository root: every service runs from here.
ROOT = Path(__file__).resolve().parent.parent
#: The services a stack is made of, in start order.
SERVICES = ("redis", "worker", "web", "nginx", "flower")
#: What answers HTTP, in start order (gunicorn, then nginx in front of it): one RUN_DIR, one WEB_PORT.
WEB_TIER = ("web", "nginx")
NGINX_TEMPLATE = ROOT / "deploy" / "nginx.conf.template"
#: Where nginx may be when not on a user's PATH (Debian's package).
_SBIN = ("/usr/local/sbin", "/usr/sbin")
#: Addresses that only this machine reaches.
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


class StackError(RuntimeError):
    """A service did not come up."""


class NotReadyError(StackError):
    """The timeout passed before the service answered."""


class ServiceExitedError(StackError):
    """A service exited (or its supervisor gave up on it): waiting longer cannot help."""


class UnsafeListenerError(ValueError):
    """A service would listen beyond loopback without authentication."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _run_dir(env: Mapping[str, str] | None) -> Path:
    return ROOT / value("RUN_DIR", env)


def web_upstream(env: Mapping[str, str] | None = None) -> str:
    """Where gunicorn listens and nginx sends requests: ``WEB_UPSTREAM``, else a socket in ``RUN_DIR``."""
    return value("WEB_UPSTREAM", env) or f"unix:{_run_dir(env) / 'web.sock'}"


def command(name: str, env: Mapping[str, str] | None = None, python: str = sys.executable, *,
            index: int | None = None) -> list[str]:
    """Service ``name``'s command line, from :data:`ROOT`; never with a credential (``ps`` shows it)."""
    if index is not None and (name != "worker" or index < 0):
        raise ValueError(f"index={index!r} for {name!r}: only the worker takes an index, from 0")
    if name == "web":
        return [python, "-m", "gunicorn", "-c", "webapp/gunicorn.conf.py", "--bind", web_upstream(env),
                "webapp.wsgi:app"]
    if name == "nginx":
        run_dir = _run_dir(env)
        binary = shutil.which("nginx") or shutil.which("nginx", path=os.pathsep.join(_SBIN))
        if binary is None:
            raise StackError("nginx is not installed: deploy/system_deps.sh up installs it (apt-get)")
        (run_dir / "nginx").mkdir(parents=True, exist_ok=True)  # its pid file and buffers
        (run_dir / "nginx.conf").write_text(nginx_config(env))
        return [binary, "-e", "stderr", "-c", str(run_dir / "nginx.conf")]
    if name == "worker":
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
        run_dir = _run_dir(env)
        # The AOF, fsynced every second, survives a restart; full, it refuses writes, never drops a task.
        return ["redis-server", str(run_dir / "redis.conf"), "--bind", "127.0.0.1", "--port", str(port),
                "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                "--maxmemory", value("REDIS_MAXMEMORY", env), "--maxmemory-policy", "noeviction",
                "--dir", str(run_dir)]
    raise ValueError(f"unknown service {name!r}: use one of {', '.join(SERVICES)}")


def nginx_config(env: Mapping[str, str] | None = None) -> str:
    """:data:`NGINX_TEMPLATE` for these settings: the body limit and 413 body are the app's own."""
    from webapp import MULTIPART_OVERHEAD_BYTES
    from webapp.errors import error_body

    host, web = value("BIND_HOST", env), load(WebSettings, env)
    max_body = web.max_upload_bytes + MULTIPART_OVERHEAD_BYTES  # the app's MAX_CONTENT_LENGTH
    too_large = error_body("payload_too_large", f"the request is over {max_body} bytes (MAX_UPLOAD_MB "
                                                f"is {web.max_upload_mb:g}, plus the multipart framing)")
    return Template(NGINX_TEMPLATE.read_text()).substitute(
        # Root's workers would be nobody, who cannot reach gunicorn's socket in a 0700 RUN_DIR.
        user="user root;" if os.geteuid() == 0 else "",
        run_dir=_run_dir(env) / "nginx",
        listen=f"[{host}]:{value('WEB_PORT', env)}" if ":" in host else f"{host}:{value('WEB_PORT', env)}",
        upstream=web_upstream(env),
        read_timeout=f"{value('WEB_READ_TIMEOUT', env) * 1000:.0f}ms",
        proxy_read_timeout=f"{(value('RESULT_TIMEOUT', env) + 30) * 1000:.0f}ms",
        max_body=max_body,
        payload_too_large=json.dumps(too_large))


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
    path = _run_dir(env) / "redis.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # a new file, so the mode below is the one it is created with
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(redis_config(env))
    return path


@dataclass(frozen=True)
class Probe:
    """One GET: the HTTP status (None when nothing answered) and a short reason."""

    status: int | None
    detail: str

    @property
    def ready(self) -> bool:
        return self.status == 200

    def __str__(self) -> str:
        return f"no answer ({self.detail})" if self.status is None else f"{self.status} {self.detail}".strip()


def probe(url: str, timeout: float = 3.0) -> Probe:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return Probe(response.status, "")
    except urllib.error.HTTPError as exc:
        return Probe(exc.code, " ".join(exc.read(160).decode("utf-8", "replace").split()))
    except (urllib.error.URLError, OSError) as exc:
        return Probe(None, str(getattr(exc, "reason", exc)))


def wait_until(check: Callable[[], str | None], timeout: float, *, interval: float = 1.0,
               give_up: Callable[[], str | None] | None = None, progress: Callable[[str], None] | None = None,
               report_every: float = 5.0) -> float:
    """Call ``check`` (None: ready, else why not) until ready, or until ``give_up`` gives a reason."""
    start = next_report = time.monotonic()
    while True:
        if give_up and (stop := give_up()):
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


class Process:
    """One command in a process group of its own (a new session), its output in ``log_path``."""

    def __init__(self, argv: Sequence[str], *, log_path: Path, env: Mapping[str, str] | None = None,
                 cwd: Path = ROOT, name: str | None = None, grace: float = 15.0) -> None:
        self.argv, self.log_path, self.cwd = list(argv), Path(log_path), cwd
        self.env = dict(os.environ) if env is None else dict(env)
        self.name = name or Path(self.argv[0]).name
        self.grace = grace  #: seconds :meth:`stop` lets the group finish after SIGTERM
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
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
        return self._popen().pid

    def _popen(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise RuntimeError(f"{self.name} was not started")
        return self.proc

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
        return self._popen().wait(timeout)

    def stop(self) -> None:
        """SIGTERM to the group, ``grace`` seconds, then SIGKILL to what is left (children may linger)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=self.grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.stack", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in ("exec", "command"):
        verb_parser = sub.add_parser(verb)
        verb_parser.add_argument("service", choices=SERVICES)
        verb_parser.add_argument("--index", type=int, help="worker only: which of WORKERS on this host")
        verb_parser.add_argument("--model", help="worker only: the repository model it serves")
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
    except (UnsafeListenerError, StackError) as exc:
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
        os.environ.update(MODEL=args.model, MODEL_WEIGHTS="")
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    sys.exit(main())
