"""The system under test: gunicorn + worker(s) for one variant, started through ``deploy.stack``.

The commands ``make up`` runs, each in its own process group so the whole tree ends
with the run, with free ports, a Celery queue of its own and by default a Redis DB
of its own, flushed first: a stack never sees another's messages or workers. A variant
with ``WORKERS=N`` starts N workers on that queue, as ``make up WORKERS=N`` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import psutil
import redis

from common.config import parse_bool, value
from deploy import redisurl
from deploy.stack import ROOT, Process, StackError, command, free_port, probe, wait_until

from . import defaults
from .exceptions import StackStartError
from .make_corpus import CORPUS_DIR

__all__ = ["INDIVIDUAL", "Services", "Stack", "StartStop", "Variant", "batch_variant", "flush_private_db",
           "predict_problem", "variant_redis_url"]

#: Settings a variant may set; anything else in ``Variant.env`` is refused.
_VARIANT_KEYS = frozenset({"USE_BATCH_PROCESSING", "BATCH_SIZE", "BATCH_TIMEOUT", "BATCH_POLICY",
                           "MAX_SYNC_QUEUE_LENGTH", "WORKERS", "MODEL", "SIMULATED_BATCH_MS",
                           "SIMULATED_ITEM_MS", "WEB_THREADS", "IMAGES_BY_REFERENCE"})
#: Redis has databases 0..15; 0 is nobody's to flush.
_LAST_DB = 15


@dataclass(frozen=True)
class Variant:
    """One configuration of the stack: a name for reports and the worker/web settings it sets."""

    name: str  #: e.g. ``individual``, ``batch-timeout``, ``b4-t0.5``
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.env) - _VARIANT_KEYS
        if unknown:
            raise ValueError(f"variant {self.name!r} sets {sorted(unknown)}: "
                             f"use only {sorted(_VARIANT_KEYS)}")
        value("WORKERS", self.env)  # a bad WORKERS fails here, the message naming it

    @property
    def workers(self) -> int:
        """Worker processes on the stack's queue (``WORKERS``, default 1)."""
        return int(value("WORKERS", self.env))

    @property
    def mode(self) -> str:
        """``batch`` when the variant turns batch processing on, else ``individual``."""
        return "batch" if parse_bool(self.env.get("USE_BATCH_PROCESSING", "false")) else "individual"


#: The baseline every plan measures against.
INDIVIDUAL = Variant("individual", {"USE_BATCH_PROCESSING": "false"})


def batch_variant(name: str, size: int, timeout: float, policy: str) -> Variant:
    """Batch processing on, with these BATCH_SIZE, BATCH_TIMEOUT (seconds) and BATCH_POLICY."""
    return Variant(name, {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": str(size),
                          "BATCH_TIMEOUT": f"{timeout:g}", "BATCH_POLICY": policy})


def variant_redis_url(base_url: str, offset: int) -> str:
    """``base_url`` with its DB number moved up by ``offset``; DB 0 and DBs past 15 are refused."""
    db = redisurl.parse(base_url).db + offset
    if not 1 <= db <= _LAST_DB:
        raise ValueError(f"Redis DB {db} from {base_url} + {offset}: use a base DB between 1 and "
                         f"{_LAST_DB - offset}")
    return redisurl.with_db(base_url, db)


def flush_private_db(redis_url: str) -> None:
    """Empty ``redis_url``'s database before a run; ValueError for DB 0, which is nobody's to flush."""
    if redisurl.parse(redis_url).db == 0:
        raise ValueError(f"refusing to flush Redis DB 0 ({redis_url}): give --redis-url a private DB "
                         "such as /11")
    with redis.Redis.from_url(redis_url) as client:
        client.flushdb()


def _tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, its live descendants and its reaped children."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


#: Seconds one readiness upload may take (the first forward passes are slow).
_PREDICT_TIMEOUT_S = 30.0


def _multipart(name: str, data: bytes, content_type: str) -> tuple[bytes, str]:
    """``data`` as multipart field ``file`` (the locustfile's request); body and Content-Type."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def predict_problem(url: str) -> str | None:
    """None when one upload (the smallest corpus JPEG, as multipart field ``file``) to ``url/predict``
    comes back 200 with a prediction, else why not."""
    photo = min(CORPUS_DIR.glob("*.jpg"), key=lambda p: p.stat().st_size)
    body, content_type = _multipart(photo.name, photo.read_bytes(), "image/jpeg")
    request = urllib.request.Request(f"{url}/predict", data=body, headers={"Content-Type": content_type},
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=_PREDICT_TIMEOUT_S) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return f"/predict: HTTP {exc.code}: {exc.read(200)!r}"
    except (OSError, ValueError) as exc:
        return f"/predict: {exc}"
    if isinstance(answer, dict) and answer.get("prediction"):
        return None
    return f"/predict: no prediction in {answer!r}"


class StartStop:
    """A context manager that starts on entry (stopping again if that fails) and always stops."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _S) -> _S:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


_S = TypeVar("_S", bound=StartStop)


class Services(StartStop):
    """Processes started in order and stopped in reverse, with a readiness wait that gives up
    when one exits and reports every log's tail."""

    def __init__(self, services: Mapping[str, Process], name: str) -> None:
        #: By name, in start order.
        self.services = dict(services)
        self.name = name

    def start(self) -> None:
        for service in self.services.values():
            service.start()

    def stop(self) -> None:
        for service in reversed(self.services.values()):
            service.stop()

    def _exited(self) -> str | None:
        return next((reason for s in self.services.values() if (reason := s.exited())), None)

    def wait(self, check: Callable[[], str | None], timeout: float, interval: float) -> float:
        """``wait_until(check)``; StackStartError with every service's log tail if it never passes."""
        try:
            return wait_until(check, timeout, interval=interval, give_up=self._exited)
        except StackError as exc:
            logs = "".join(f"\n{name} log:\n{s.log_tail()}" for name, s in self.services.items())
            raise StackStartError(f"{self.name}: {exc}{logs}") from None


class Stack(Services):
    """gunicorn + worker(s) for one variant, as a context manager that always cleans up.

    ``services`` holds ``worker`` (the first worker), ``worker-1`` .. for a variant with
    ``WORKERS`` > 1, then ``web``; ``metrics_url`` is the first worker's, ``metrics_urls`` all.
    """

    def __init__(self, variant: Variant, *, redis_url: str, log_dir: Path, project_root: Path = ROOT,
                 flush: bool = True, broker_url: str | None = None) -> None:
        self.variant = variant
        self.redis_url = redis_url
        self.flush = flush
        self.web_port, self.metrics_port = free_port(), free_port()
        #: Each worker's /metrics port: free ones rather than make up's base + n, which may be taken.
        self.metrics_ports = [self.metrics_port, *(free_port() for _ in range(variant.workers - 1))]
        self.url = f"http://127.0.0.1:{self.web_port}"  #: the web app
        self.metrics_urls = [f"http://127.0.0.1:{port}/metrics" for port in self.metrics_ports]
        self.metrics_url = self.metrics_urls[0]  #: the first worker's Prometheus
        #: A queue of its own: no other worker on the same Redis takes this stack's tasks.
        self.queue = f"loadtest-{variant.name}-{uuid.uuid4().hex[:8]}"
        env = {**os.environ, **variant.env,
               "REDIS_URL": redis_url, "CELERY_BROKER_URL": broker_url or redis_url,
               "CELERY_RESULT_BACKEND": redis_url,
               "BIND_HOST": "127.0.0.1", "WEB_PORT": str(self.web_port),
               "WORKER_METRICS_PORT": str(self.metrics_port), "CELERY_QUEUE": self.queue,
               "PYTHONUNBUFFERED": "1"}
        # Started in this order, stopped in the reverse one (the web app first: no new work).
        services = {name: Process(command(name, env), log_path=log_dir / f"{name}.log", env=env,
                                  cwd=project_root, name=name)
                    for name in ("worker", "web")}
        if variant.workers > 1:  # more workers on the same queue, each its own node name and port
            workers = {}
            for index, port in enumerate(self.metrics_ports):
                name = "worker" if index == 0 else f"worker-{index}"
                worker_env = {**env, "WORKER_METRICS_PORT": str(port)}
                workers[name] = Process(command("worker", worker_env, index=index), env=worker_env,
                                        log_path=log_dir / f"{name}.log", cwd=project_root, name=name)
            services = {**workers, "web": services["web"]}
        super().__init__(services, f"stack {variant.name}")

    def start(self) -> None:
        """Flush the Redis DB (unless told not to); start the worker and the web app."""
        if self.flush:
            flush_private_db(self.redis_url)
        super().start()

    def wait_ready(self, timeout: float = defaults.READY_TIMEOUT_S, interval: float = 0.25) -> float:
        """Wait for GET /readyz (*a* worker answers), then for one answered upload (this stack's
        worker consumes its queue, model loaded) and, with several workers, for every worker's
        /metrics (served once its model is loaded); return the seconds taken."""
        def check() -> str | None:
            ready = probe(f"{self.url}/readyz", timeout=2.0)
            if not ready.ready:
                return f"/readyz: {ready}"
            if problem := predict_problem(self.url):
                return problem
            waiting = [url for url in self.metrics_urls[1:] if not probe(url, timeout=2.0).ready]
            return f"workers not ready yet: {', '.join(waiting)}" if waiting else None

        return self.wait(check, timeout, interval)

    def cpu_seconds(self) -> float:
        """CPU seconds used so far by every process tree (web app and workers)."""
        return sum(_tree_cpu_seconds(s.pid) for s in self.services.values() if s.proc is not None)

