"""Start and stop the system under test (gunicorn + worker) as process groups.

Each stack runs the same commands an operator would: ``gunicorn -c
webapp/gunicorn.conf.py webapp.wsgi:app`` and ``python -m workers``, each in a
new session so that ``os.killpg`` ends the whole tree (gunicorn's workers, the
Celery pool's children) when the run is over. A stack gets its own free HTTP
and worker-metrics ports, its own Celery queue (CELERY_QUEUE) and by default
its own Redis DB, flushed before it starts, so a stack never sees messages
left over by another, nor shares its queue with a worker it did not start.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import psutil

from . import defaults
from .exceptions import StackStartError

__all__ = ["PROJECT_ROOT", "Stack", "Variant", "free_port", "kill_group", "redis_db_url"]

logger = logging.getLogger(__name__)

#: The repository root: gunicorn and the worker run from here.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Settings a variant may set; anything else in ``Variant.env`` is refused.
_VARIANT_KEYS = frozenset({"USE_BATCH_PROCESSING", "BATCH_SIZE", "BATCH_TIMEOUT", "BATCH_POLICY"})


@dataclass(frozen=True)
class Variant:
    """One configuration of the stack: a name for reports and the worker/web settings it sets."""

    name: str  #: e.g. ``individual``, ``batch-timeout``, ``b4-t0.5``
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.env) - _VARIANT_KEYS
        if unknown:
            raise ValueError(
                f"variant {self.name!r} sets {sorted(unknown)}: use only {sorted(_VARIANT_KEYS)}"
            )

    @property
    def mode(self) -> str:
        """``batch`` when the variant turns batch processing on, else ``individual``."""
        value = self.env.get("USE_BATCH_PROCESSING", "false").lower()
        return "batch" if value in {"1", "true", "yes", "on"} else "individual"


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_db_url(base_url: str, offset: int) -> str:
    """``base_url`` with its DB number moved up by ``offset``; DB 0 and DBs past 15 are refused."""
    parts = urlsplit(base_url)
    path = parts.path.strip("/")
    db = (int(path) if path else 0) + offset
    if not 1 <= db <= 15:
        raise ValueError(
            f"Redis DB {db} from {base_url} + {offset}: use a base DB between 1 and {15 - offset}"
        )
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def _probe_photo() -> bytes:
    """A small real JPEG from the corpus, for the readiness upload."""
    photos = sorted(
        (Path(__file__).resolve().parent / "corpus").glob("*.jpg"), key=lambda p: p.stat().st_size
    )
    if not photos:
        raise StackStartError("no JPEG in loadtest/corpus: run python -m loadtest.make_corpus")
    return photos[0].read_bytes()


def _flush_db(url: str) -> None:
    """Empty the stack's private Redis DB; refuse DB 0, which may hold someone's real queue."""
    path = urlsplit(url).path.strip("/")
    if not path or int(path) == 0:
        raise ValueError(f"refusing to flush Redis DB 0 ({url}): give --redis-url a private DB such as /11")
    try:
        import redis
    except ImportError:  # pragma: no cover - redis-py comes with celery[redis]
        logger.warning("redis-py missing; not flushing %s", url)
        return
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def kill_group(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process group led by ``proc``, wait, then SIGKILL whatever is left of it."""
    pgid = proc.pid
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        logger.warning("process group %s ignored SIGTERM for %.0fs; killing it", pgid, timeout)
    # The leader may be gone while its children (pool processes) linger in the group.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, its live descendants and its reaped children."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


class Stack:
    """gunicorn + worker for one variant, as a context manager that always cleans up.

    ``start()`` flushes the stack's Redis DB and launches both process groups;
    ``wait_ready()`` polls GET /readyz; ``stop()`` kills both trees.
    """

    def __init__(
        self,
        variant: Variant,
        *,
        redis_url: str,
        log_dir: Path,
        project_root: Path = PROJECT_ROOT,
        python: str = sys.executable,
        extra_env: Mapping[str, str] | None = None,
        flush: bool = True,
    ) -> None:
        self.variant = variant
        self.flush = flush
        self.redis_url = redis_url
        self.log_dir = log_dir
        self.project_root = project_root
        self.python = python
        self.extra_env = dict(extra_env or {})
        self.web_port = free_port()
        self.metrics_port = free_port()
        #: A queue of its own: no other worker on the same Redis takes this stack's tasks.
        self.queue = f"loadtest-{variant.name}-{uuid.uuid4().hex[:8]}"
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """Base URL of the web app."""
        return f"http://127.0.0.1:{self.web_port}"

    @property
    def metrics_url(self) -> str:
        """The worker's Prometheus endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def env(self) -> dict[str, str]:
        """Environment of both processes: ours, the variant's settings, private ports, Redis DB and queue."""
        env = {**os.environ, **self.extra_env, **self.variant.env}
        env.update(
            REDIS_URL=self.redis_url,
            CELERY_BROKER_URL=self.redis_url,
            CELERY_RESULT_BACKEND=self.redis_url,
            WEB_PORT=str(self.web_port),
            WORKER_METRICS_PORT=str(self.metrics_port),
            CELERY_QUEUE=self.queue,
            PYTHONUNBUFFERED="1",
        )
        return env

    def commands(self) -> dict[str, list[str]]:
        """The two commands, as an operator would type them (plus an explicit bind)."""
        return {
            "worker": [self.python, "-m", "workers"],
            "web": [
                self.python,
                "-m",
                "gunicorn",
                "-c",
                "webapp/gunicorn.conf.py",
                "--bind",
                f"127.0.0.1:{self.web_port}",
                "webapp.wsgi:app",
            ],
        }

    def start(self) -> None:
        """Flush the Redis DB (unless told not to); start the worker and the web app in new sessions."""
        if self.flush:
            _flush_db(self.redis_url)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = self.env()
        for name, cmd in self.commands().items():
            with open(self.log_dir / f"{name}.log", "ab") as log:
                self._procs[name] = subprocess.Popen(
                    cmd,
                    cwd=self.project_root,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            logger.info("stack %s: started %s (pid %s)", self.variant.name, name, self._procs[name].pid)

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise StackStartError(
                    f"{name} of stack {self.variant.name} exited with {proc.returncode}; "
                    f"last log lines:\n{self.log_tail(name)}"
                )

    def log_tail(self, name: str, lines: int = 20) -> str:
        """The last ``lines`` lines of one process's log."""
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _get_ok(self, path: str) -> str | None:
        """None when GET ``path`` answers 200, else why not."""
        try:
            with urllib.request.urlopen(f"{self.url}{path}", timeout=2.0) as response:
                return None if response.status == 200 else f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}: {exc.read(200)!r}"
        except (urllib.error.URLError, OSError) as exc:
            return str(exc)

    def _predict_ok(self, timeout: float) -> str | None:
        """None when one upload (a raw JPEG body) comes back 200 with a prediction, else why not."""
        request = urllib.request.Request(
            f"{self.url}/predict", data=_probe_photo(), headers={"Content-Type": "image/jpeg"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=max(timeout, 1.0)) as response:
                body = json.loads(response.read() or b"{}")
                return (
                    None if isinstance(body, dict) and body.get("prediction") else f"no prediction: {body!r}"
                )
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}: {exc.read(200)!r}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return str(exc)

    def wait_ready(self, timeout: float = defaults.READY_TIMEOUT_S, interval: float = 0.25) -> float:
        """Poll GET /readyz until 200, then upload until one answer comes back; return the seconds taken.

        /readyz only says that *a* worker answers on the broker; the upload proves that
        this stack's own worker consumes this stack's queue and has its model loaded.
        """
        start = time.monotonic()
        last: str | None = "no answer yet"
        ready = False
        while time.monotonic() - start < timeout:
            self._check_alive()
            if not ready:
                last = self._get_ok("/readyz")
                ready = last is None
            if ready:
                last = self._predict_ok(timeout - (time.monotonic() - start))
                if last is None:
                    return time.monotonic() - start
            time.sleep(interval)
        raise StackStartError(
            f"stack {self.variant.name}: not ready after {timeout:.0f}s ({last}); "
            f"worker log:\n{self.log_tail('worker')}\nweb log:\n{self.log_tail('web')}"
        )

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by both process trees."""
        return sum(_tree_cpu_seconds(proc.pid) for proc in self._procs.values())

    def stop(self) -> None:
        """Kill the web app first (no new work), then the worker."""
        for name in ("web", "worker"):
            proc = self._procs.pop(name, None)
            if proc is not None:
                kill_group(proc)
                logger.info("stack %s: stopped %s", self.variant.name, name)

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
