"""Start one variant of the peer comparison and wait until it classifies; stop it whole.

:class:`ProjectServer` is this project's stack (``loadtest.stack.Stack``: the commands ``make
up`` runs); :class:`LitServeServer` and :class:`PlainCeleryServer` start the peers in
:mod:`loadtest.peer_servers`. Each service is a process group of its own (``deploy.stack.
Process``), so stopping one ends its whole tree, and each names the process trees whose CPU
time the comparison counts (:meth:`Server.cpu_roots`).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import redis

from deploy import redisurl
from deploy.stack import ROOT, Process, StackError, free_port, probe, wait_until

from ..exceptions import StackStartError
from ..make_corpus import CORPUS_DIR
from ..stack import Stack, Variant

__all__ = ["LitServeServer", "ModelSettings", "PlainCeleryServer", "ProjectServer", "Server",
           "predict_problem"]

#: Seconds one readiness upload may take (the first forward passes are slow).
_PREDICT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ModelSettings:
    """The model every variant serves: its name, weights (None: its own) and TorchScript freezing."""

    name: str
    weights: str | None = None
    jit: bool = True

    def env(self) -> dict[str, str]:
        """The project's settings for it (``MODEL``, ``MODEL_WEIGHTS``, ``MODEL_JIT``)."""
        return {"MODEL": self.name, "MODEL_WEIGHTS": self.weights or "", "MODEL_JIT": str(self.jit).lower()}


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


class Server(ABC):
    """One variant's servers, as a context manager that always stops them."""

    url: str  #: where locust sends its uploads
    uses_redis: bool  #: whether the Redis server's CPU belongs to this variant

    @abstractmethod
    def start(self) -> None:
        """Start every service."""

    @abstractmethod
    def wait_ready(self, timeout: float) -> float:
        """Wait until an upload is classified; the seconds it took (StackStartError if never)."""

    @abstractmethod
    def stop(self) -> None:
        """Stop every service, whole process groups."""

    @abstractmethod
    def cpu_roots(self) -> dict[str, int]:
        """The root pid of each process tree whose CPU time counts, by the name it is shown as."""

    def __enter__(self) -> Server:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class ProjectServer(Server):
    """This project's gunicorn + worker (``loadtest.stack.Stack``) with the comparison's model."""

    uses_redis = True

    def __init__(self, variant: Variant, model: ModelSettings, *, redis_url: str, log_dir: Path,
                 flush: bool = True, project_root: Path = ROOT) -> None:
        self.stack = Stack(variant, redis_url=redis_url, log_dir=log_dir, flush=flush,
                           project_root=project_root)
        for service in self.stack.services.values():  # the stack takes MODEL... from its environment
            service.env.update(model.env())
        self.url = self.stack.url

    def start(self) -> None:
        self.stack.start()

    def wait_ready(self, timeout: float) -> float:
        return self.stack.wait_ready(timeout)

    def stop(self) -> None:
        self.stack.stop()

    def cpu_roots(self) -> dict[str, int]:
        return {name: service.pid for name, service in self.stack.services.items()}


class _ProcessServer(Server):
    """Services started from command lines; ready once GET ``health_path`` and an upload succeed."""

    health_path = "/health"

    def __init__(self, name: str, commands: Mapping[str, list[str]], env: Mapping[str, str], port: int,
                 log_dir: Path) -> None:
        self.name = name
        self.url = f"http://127.0.0.1:{port}"
        #: Started in this order, stopped in the reverse one.
        self.services = {service: Process(argv, log_path=log_dir / f"{service}.log", env=env, cwd=ROOT,
                                          name=service) for service, argv in commands.items()}

    def start(self) -> None:
        for service in self.services.values():
            service.start()

    def _exited(self) -> str | None:
        return next((reason for s in self.services.values() if (reason := s.exited())), None)

    def wait_ready(self, timeout: float) -> float:
        def check() -> str | None:
            health = probe(f"{self.url}{self.health_path}", timeout=2.0)
            return predict_problem(self.url) if health.ready else f"{self.health_path}: {health}"

        try:
            return wait_until(check, timeout, interval=0.5, give_up=self._exited)
        except StackError as exc:
            logs = "".join(f"\n{name} log:\n{s.log_tail()}" for name, s in self.services.items())
            raise StackStartError(f"{self.name}: {exc}{logs}") from None

    def stop(self) -> None:
        for service in reversed(self.services.values()):
            service.stop()

    def cpu_roots(self) -> dict[str, int]:
        return {name: s.pid for name, s in self.services.items() if s.proc is not None}


def _threads(concurrent_passes: int) -> int:
    """torch threads per forward pass: the cores shared among the passes that run at once (the
    project's own default, ``workers.runtime.default_torch_threads``)."""
    return max(1, (os.cpu_count() or 1) // concurrent_passes)


class LitServeServer(_ProcessServer):
    """``loadtest.peer_servers.litserve_server`` run by LitServe's virtualenv: one API server
    process, one inference worker with all the cores' torch threads, LitServe's batching."""

    uses_redis = False

    def __init__(self, python: Path, model: ModelSettings, *, log_dir: Path, max_batch_size: int,
                 batch_timeout: float) -> None:
        port = free_port()
        command = [str(python), "-m", "loadtest.peer_servers.litserve_server", "--port", str(port),
                   "--model", model.name, "--threads", str(_threads(1)),
                   "--max-batch-size", str(max_batch_size), "--batch-timeout", f"{batch_timeout:g}",
                   *(["--weights", model.weights] if model.weights else []),
                   *([] if model.jit else ["--no-jit"])]
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
        super().__init__("litserve", {"litserve": command}, env, port, log_dir)


class PlainCeleryServer(_ProcessServer):
    """``loadtest.peer_servers.plain_celery``: gunicorn (gthread, ``threads`` threads, like the
    project's web app) and a Celery worker (prefork, ``concurrency`` processes) on a queue and
    Redis DB of their own, the DB flushed first unless ``flush`` is False."""

    uses_redis = True

    def __init__(self, model: ModelSettings, *, redis_url: str, log_dir: Path, flush: bool = True,
                 threads: int = 64, concurrency: int = 2) -> None:
        port = free_port()
        self.redis_url, self.flush = redis_url, flush
        env = {**os.environ, **model.env(), "PLAIN_REDIS_URL": redis_url,
               "PLAIN_QUEUE": f"plain-{uuid.uuid4().hex[:8]}", "TORCH_THREADS": str(_threads(concurrency)),
               "PYTHONUNBUFFERED": "1"}
        module = "loadtest.peer_servers.plain_celery"
        commands = {
            "worker": [sys.executable, "-m", "celery", "-A", f"{module}:celery_app", "worker",
                       "--pool", "prefork", "--concurrency", str(concurrency)],
            # No control socket: gunicorn's default path is one per user, shared with other servers.
            "web": [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--worker-class",
                    "gthread", "--threads", str(threads), "--no-control-socket", f"{module}:flask_app"],
        }
        super().__init__("plain-celery", commands, env, port, log_dir)

    def start(self) -> None:
        if self.flush:
            if redisurl.parse(self.redis_url).db == 0:
                raise ValueError(f"refusing to flush Redis DB 0 ({self.redis_url}): give --redis-url a "
                                 "private DB such as /11")
            with redis.Redis.from_url(self.redis_url) as client:
                client.flushdb()
        super().start()
