"""The servers a plan measures, started through ``deploy.stack`` like ``make up`` starts them: on free
ports, each stack with a Celery queue of its own and a flushed Redis DB, so it sees no other's messages.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import redis
import requests

from common.config import parse_bool, value
from deploy import redisurl
from deploy.stack import ROOT, WEB_TIER, Process, StackError, command, free_port, probe, wait_until

from .make_corpus import CORPUS_DIR

_VARIANT_KEYS = frozenset({"USE_BATCH_PROCESSING", "BATCH_SIZE", "BATCH_TIMEOUT", "BATCH_POLICY",
                           "MAX_SYNC_QUEUE_LENGTH", "WORKERS", "MODEL", "SIMULATED_BATCH_MS",
                           "SIMULATED_ITEM_MS", "WEB_THREADS", "IMAGES_BY_REFERENCE"})
#: Seconds to wait for readiness and one answered upload after a start (first model loads are slow).
READY_TIMEOUT_S = 180.0


class LoadtestError(Exception):
    """A server did not come up or answer, or locust measured nothing."""


@dataclass(frozen=True)
class Variant:
    """One configuration of the stack: a name for reports and the settings it sets."""
    name: str
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if unknown := set(self.env) - _VARIANT_KEYS:
            raise ValueError(f"variant {self.name!r} sets {sorted(unknown)}; known: {sorted(_VARIANT_KEYS)}")
        value("WORKERS", self.env)  # a bad WORKERS fails here, the message naming it

    @property
    def workers(self) -> int:
        return int(value("WORKERS", self.env))

    @property
    def mode(self) -> str:
        return "batch" if parse_bool(self.env.get("USE_BATCH_PROCESSING", "false")) else "individual"


INDIVIDUAL = Variant("individual", {"USE_BATCH_PROCESSING": "false"})


def batch_variant(name: str, size: int, timeout: float, policy: str) -> Variant:
    return Variant(name, {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": str(size),
                          "BATCH_TIMEOUT": f"{timeout:g}", "BATCH_POLICY": policy})


def variant_redis_url(base_url: str, offset: int) -> str:
    """``base_url`` with its DB number moved up by ``offset``; DB 0 (nobody's) and past 15 are refused."""
    db = redisurl.parse(base_url).db + offset
    if not 1 <= db <= 15:
        raise ValueError(f"Redis DB {db} from {base_url} + {offset}: use a base DB from 1 to {15 - offset}")
    return redisurl.with_db(base_url, db)


def predict_problem(url: str) -> str | None:
    """None when one upload of the smallest corpus JPEG to ``url/predict`` gets a prediction, else why."""
    photo = min(CORPUS_DIR.glob("*.jpg"), key=lambda p: p.stat().st_size)
    try:
        response = requests.post(f"{url}/predict", timeout=30.0,
                                 files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})
        if not response.ok:
            return f"/predict: HTTP {response.status_code}: {response.content[:200]!r}"
        answer = response.json()
    except (requests.RequestException, ValueError) as exc:
        return f"/predict: {exc}"
    return None if isinstance(answer, dict) and answer.get("prediction") else \
        f"/predict: no prediction in {answer!r}"


Commands = Mapping[str, tuple[list[str], Mapping[str, str]]]  #: service name -> (argv, environment)


class Server:
    """Services started in order and stopped in reverse, with a readiness wait that gives up when one
    exits and then reports every log's tail."""

    uses_redis = True  #: whether the Redis server's CPU belongs to this server's runs
    health_path = "/health"  #: answers 200 before the readiness upload is tried

    def __init__(self, name: str, port: int, commands: Commands, *, log_dir: Path, cwd: Path = ROOT,
                 redis_url: str | None = None) -> None:
        self.name, self.url, self.redis_url = name, f"http://127.0.0.1:{port}", redis_url
        self.services = {service: Process(argv, log_path=log_dir / f"{service}.log", env=env, cwd=cwd,
                                          name=service) for service, (argv, env) in commands.items()}
        self.metrics_urls: list[str] = []  #: the workers' Prometheus endpoints, if any

    def start(self) -> None:
        if self.redis_url is not None:
            if redisurl.parse(self.redis_url).db == 0:
                raise ValueError(f"refusing to flush Redis DB 0 ({self.redis_url}): give --redis-url a "
                                 "private DB such as /11")
            with redis.Redis.from_url(self.redis_url) as client:
                client.flushdb()
        for service in self.services.values():
            service.start()

    def stop(self) -> None:
        for service in reversed(self.services.values()):
            service.stop()

    def cpu_roots(self) -> dict[str, int]:  # the process trees whose CPU counts
        return {name: s.pid for name, s in self.services.items() if s.proc is not None}

    def log_tails(self) -> str:
        return "".join(f"\n{name} log:\n{s.log_tail()}" for name, s in self.services.items())

    def _ready(self) -> str | None:
        health = probe(f"{self.url}{self.health_path}", timeout=2.0)
        return predict_problem(self.url) if health.ready else f"{self.health_path}: {health}"

    def wait_ready(self, timeout: float = READY_TIMEOUT_S, interval: float = 0.25) -> float:
        def exited() -> str | None:
            return next((reason for s in self.services.values() if (reason := s.exited())), None)
        try:
            return wait_until(self._ready, timeout, interval=interval, give_up=exited)
        except StackError as exc:
            raise LoadtestError(f"{self.name}: {exc}{self.log_tails()}") from None

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Stack(Server):
    """The project's stack for one variant: ``worker`` (``worker-1`` .. for ``WORKERS`` > 1), then the web
    tier, stopped first so that no new work comes in."""

    health_path = "/readyz"

    def __init__(self, variant: Variant, *, redis_url: str, log_dir: Path, project_root: Path = ROOT,
                 flush: bool = True, broker_url: str | None = None, env: Mapping[str, str] | None = None,
                 ) -> None:
        self.variant, self.web_port = variant, free_port()
        self.metrics_ports = [free_port() for _ in range(variant.workers)]  # make up's base + n may be taken
        self.queue = f"loadtest-{variant.name}-{uuid.uuid4().hex[:8]}"  # no other worker takes its tasks
        self.run_dir = Path(tempfile.mkdtemp(prefix="loadtest-"))  # short: unix socket paths have a limit
        base = {**os.environ, **(env or {}), **variant.env, "REDIS_URL": redis_url,
                "CELERY_BROKER_URL": broker_url or redis_url, "CELERY_RESULT_BACKEND": redis_url,
                "BIND_HOST": "127.0.0.1", "WEB_PORT": str(self.web_port), "RUN_DIR": str(self.run_dir),
                "CELERY_QUEUE": self.queue, "PYTHONUNBUFFERED": "1",
                "WORKER_METRICS_PORT": str(self.metrics_ports[0])}
        commands: dict[str, tuple[list[str], Mapping[str, str]]] = {}
        for i, port in enumerate(self.metrics_ports):
            worker = {**base, "WORKER_METRICS_PORT": str(port)}
            commands[f"worker-{i}" if i else "worker"] = (
                command("worker", worker, index=i if variant.workers > 1 else None), worker)
        commands.update({name: (command(name, base), base) for name in WEB_TIER})
        super().__init__(f"stack {variant.name}", self.web_port, commands, log_dir=log_dir, cwd=project_root,
                         redis_url=redis_url if flush else None)
        self.metrics_urls = [f"http://127.0.0.1:{port}/metrics" for port in self.metrics_ports]

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def _ready(self) -> str | None:
        """/readyz, one upload answered, every other worker's /metrics (served once its model is loaded)."""
        if problem := super()._ready():
            return problem
        waiting = [url for url in self.metrics_urls[1:] if not probe(url, timeout=2.0).ready]
        return f"workers not ready yet: {', '.join(waiting)}" if waiting else None


@dataclass(frozen=True)
class ModelSettings:
    """The model every peer serves: its name, weights (None: its own) and TorchScript freezing."""
    name: str
    weights: str | None = None
    jit: bool = True

    def env(self) -> dict[str, str]:
        return {"MODEL": self.name, "MODEL_WEIGHTS": self.weights or "", "MODEL_JIT": str(self.jit).lower()}


def _threads(concurrent_passes: int) -> int:  # the project's rule: the cores shared among passes
    return max(1, (os.cpu_count() or 1) // concurrent_passes)


class LitServeServer(Server):
    """``peer_servers.litserve_server`` in LitServe's virtualenv: one API server, one inference worker."""

    uses_redis = False

    def __init__(self, python: Path, model: ModelSettings, *, log_dir: Path, max_batch_size: int,
                 batch_timeout: float) -> None:
        port, env = free_port(), {**os.environ, **model.env(), "PYTHONUNBUFFERED": "1"}
        argv = [str(python), "-m", "loadtest.peer_servers.litserve_server", "--port", str(port),
                "--threads", str(_threads(1)), "--max-batch-size", str(max_batch_size),
                "--batch-timeout", f"{batch_timeout:g}"]
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        super().__init__("litserve", port, {"litserve": (argv, env)}, log_dir=log_dir)


class PlainCeleryServer(Server):
    """``peer_servers.plain_celery``: gunicorn gthread and a prefork Celery worker, queue and DB their own."""

    def __init__(self, model: ModelSettings, *, redis_url: str, log_dir: Path, flush: bool = True,
                 threads: int = 64, concurrency: int = 2) -> None:
        port, module = free_port(), "loadtest.peer_servers.plain_celery"
        env = {**os.environ, **model.env(), "PLAIN_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1",
               "PLAIN_QUEUE": f"plain-{uuid.uuid4().hex[:8]}", "TORCH_THREADS": str(_threads(concurrency))}
        worker = [sys.executable, "-m", "celery", "-A", f"{module}:celery_app", "worker", "--pool", "prefork",
                  "--concurrency", str(concurrency)]
        # No control socket: gunicorn's default path is one per user, shared with other servers.
        web = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread",
               "--threads", str(threads), "--no-control-socket", f"{module}:flask_app"]
        super().__init__("plain-celery", port, {"worker": (worker, env), "web": (web, env)}, log_dir=log_dir,
                         redis_url=redis_url if flush else None)
