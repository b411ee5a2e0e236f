"""Start one variant of the peer comparison and wait until it classifies; stop it whole.

:class:`ProjectServer` is this project's stack (``loadtest.stack.Stack``: the commands ``make
up`` runs); :class:`LitServeServer` and :class:`PlainCeleryServer` start the peers in
:mod:`loadtest.peer_servers`. Each service is a process group of its own (``deploy.stack.
Process``), so stopping one ends its whole tree, and each names the process trees whose CPU
time the comparison counts (:meth:`Server.cpu_roots`).
"""

from __future__ import annotations

import os
import sys
import uuid
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from deploy.stack import ROOT, Process, free_port, probe

from ..stack import Services, Stack, StartStop, Variant, flush_private_db, predict_problem

__all__ = ["LitServeServer", "ModelSettings", "PlainCeleryServer", "ProjectServer", "Server",
           "predict_problem"]

@dataclass(frozen=True)
class ModelSettings:
    """The model every variant serves: its name, weights (None: its own) and TorchScript freezing."""

    name: str
    weights: str | None = None
    jit: bool = True

    def env(self) -> dict[str, str]:
        """The project's settings for it (``MODEL``, ``MODEL_WEIGHTS``, ``MODEL_JIT``)."""
        return {"MODEL": self.name, "MODEL_WEIGHTS": self.weights or "", "MODEL_JIT": str(self.jit).lower()}


class Server(StartStop, ABC):
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


class _ProcessServer(Services, Server):
    """Services started from command lines; ready once GET ``health_path`` and an upload succeed."""

    health_path = "/health"

    def __init__(self, name: str, commands: Mapping[str, list[str]], env: Mapping[str, str], port: int,
                 log_dir: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        super().__init__({service: Process(argv, log_path=log_dir / f"{service}.log", env=env, cwd=ROOT,
                                           name=service) for service, argv in commands.items()}, name)

    def wait_ready(self, timeout: float) -> float:
        def check() -> str | None:
            health = probe(f"{self.url}{self.health_path}", timeout=2.0)
            return predict_problem(self.url) if health.ready else f"{self.health_path}: {health}"

        return self.wait(check, timeout, 0.5)

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
            flush_private_db(self.redis_url)
        super().start()
