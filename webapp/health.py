"""Liveness, readiness (which models have a live worker) and metrics endpoints."""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from flask import Blueprint, Flask, Response, abort, current_app

from celery import Celery
from celery.backends.base import BaseKeyValueStoreBackend

from common.contract import model_failure_key

from . import metrics
from .models import WebModel, WebModels

__all__ = ["Readiness", "bp", "init_app", "model_failures", "ping_broker", "worker_queues"]

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__)

#: Seconds for the broker connection and for workers to answer the broadcast
#: (both fit in Readiness.answer_within when the broker answers).
_BROKER_TIMEOUT = 1.0
_PING_TIMEOUT = 0.8
#: Probes a worker may miss (busy, a lost reply) before its models count as without one.
_MISSED_PROBES = 1


def ping_broker(celery: Celery) -> None:
    """Raise unless the broker accepts a connection within about a second."""
    with celery.connection_for_write(connect_timeout=_BROKER_TIMEOUT) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=_BROKER_TIMEOUT)


def worker_queues(celery: Celery) -> list[list[str]]:
    """The queues each live worker consumes (Celery's ``active_queues``), a list per reply: not
    by node name, so two workers started with one name on one host both count."""
    replies = celery.control.broadcast("active_queues", reply=True, timeout=_PING_TIMEOUT) or []
    return [[str(queue["name"]) for queue in queues or ()] for reply in replies for queues in reply.values()]


def model_failures(celery: Celery, names: list[str]) -> dict[str, str]:
    """Why each of ``names`` last failed to load, as its workers recorded it (``workers.lifecycle``)."""
    backend = celery.backend
    if not names or not isinstance(backend, BaseKeyValueStoreBackend):
        return {}
    values = backend.mget([model_failure_key(name) for name in names])
    return {name: (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw))
            for name, raw in zip(names, values, strict=True) if raw is not None}


@dataclass(frozen=True)
class _Answer:
    ready: bool
    reason: str | None = None
    #: Live workers per queue, by the last probe that saw the queue consumed (within the last
    #: ``_MISSED_PROBES`` + 1); None: unknown (no broker).
    live: dict[str, int] | None = None
    failures: dict[str, str] = field(default_factory=dict)
    without_workers: tuple[str, ...] = ()

    def why_not(self, model: WebModel) -> str | None:
        """Why ``model`` cannot serve now; None when it can or nobody knows yet."""
        if model.broken is not None:
            return model.broken
        queue = model.queues["sync"].name
        if self.live is None or queue in self.live:
            return None
        failure = self.failures.get(model.name)
        if failure is not None:
            return f"its workers failed to load it: {failure}"
        return f"no live worker consumes its queue {queue}"


class Readiness:
    """Cached readiness probe, never blocking a request on the broker.

    At most one probe (broker, then which queues the workers consume) runs at a
    time, in a thread of its own, and at most once per ``cache_seconds``. A
    request waits for a running probe at most ``answer_within`` seconds, then
    answers with the last answer (or "not ready" when there is none): ``/readyz``
    answers in about a second whatever the broker does. A worker stays counted
    for ``_MISSED_PROBES`` probes it does not answer, so one busy moment does not
    turn its model away.
    """

    def __init__(self, celery: Celery, models: WebModels, cache_seconds: float,
                 answer_within: float = 1.0) -> None:
        if cache_seconds < 0:
            raise ValueError(f"cache_seconds must be >= 0, got {cache_seconds!r}")
        self.celery = celery
        self.models = models
        self.cache_seconds = cache_seconds
        self.answer_within = answer_within
        self._lock = threading.Lock()
        self._answer: _Answer | None = None
        self._checked_at = 0.0
        self._probing: threading.Event | None = None
        #: The probes' times, and when each queue was last seen consumed, by how many workers.
        self._probes: list[float] = []
        self._seen: dict[str, tuple[float, int]] = {}

    def latest(self) -> _Answer | None:
        """The last answer at once (a stale one starts a probe): for the request path."""
        with self._lock:
            answer, fresh = self._answer, time.monotonic() - self._checked_at < self.cache_seconds
            if self._probing is None and not fresh:
                self._start_probe()
        return answer

    def check(self) -> _Answer:
        """Return the cached answer, or start (or join) a probe when it is stale."""
        with self._lock:
            answer = self._answer
            if answer is not None and time.monotonic() - self._checked_at < self.cache_seconds:
                return answer
            done = self._probing or self._start_probe()
        if done.wait(self.answer_within):
            with self._lock:
                return self._answer or _Answer(False, "readiness probe failed")
        return answer or _Answer(False, f"broker did not answer within {self.answer_within:g} s")

    def _start_probe(self) -> threading.Event:
        done = self._probing = threading.Event()
        threading.Thread(target=self._run_probe, args=(done,), name="readiness-probe", daemon=True).start()
        return done

    def _run_probe(self, done: threading.Event) -> None:
        try:
            answer = self._probe()
        except Exception as exc:  # noqa: BLE001 - the probe thread must always finish
            answer = _Answer(False, f"readiness probe failed: {exc}")
        with self._lock:
            self._answer, self._checked_at, self._probing = answer, time.monotonic(), None
        done.set()

    def _probe(self) -> _Answer:
        try:
            ping_broker(self.celery)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            logger.warning("Readiness: broker unreachable: %s", exc)
            return _Answer(False, f"broker unreachable: {exc}")
        try:
            nodes = worker_queues(self.celery)
        except Exception as exc:  # noqa: BLE001
            logger.warning("Readiness: asking the workers failed: %s", exc)
            return _Answer(False, f"asking the workers failed: {exc}")
        live = self._remember(Counter(queue for queues in nodes for queue in queues))
        models = self.models.by_name
        try:
            failures = model_failures(self.celery, sorted(name for name, model in models.items()
                                                          if model.queues["sync"].name not in live))
        except Exception as exc:  # noqa: BLE001 - only the reasons are lost
            logger.warning("Readiness: reading the models' load failures failed: %s", exc)
            failures = {}
        answer = _Answer(False, None, live, failures)
        without = tuple(sorted(name for name, model in models.items() if answer.why_not(model) is not None))
        reason = self._not_ready(answer, without, bool(nodes))
        return replace(answer, ready=reason is None, reason=reason, without_workers=without)

    def _remember(self, workers: Counter[str]) -> dict[str, int]:
        """The queues seen consumed in this probe or one of the ``_MISSED_PROBES`` before it, with
        their workers by the last probe that saw them."""
        now = time.monotonic()
        self._probes = [*self._probes[-_MISSED_PROBES:], now]
        self._seen.update({queue: (now, count) for queue, count in workers.items()})
        oldest = self._probes[0]
        return {queue: count for queue, (seen, count) in self._seen.items() if seen >= oldest}

    def _not_ready(self, answer: _Answer, without: tuple[str, ...], any_worker: bool) -> str | None:
        default = self.models.default_model
        if default is not None:
            why = answer.why_not(default)
            return None if why is None else f"the default model {default.name} cannot serve: {why}"
        if len(without) < len(self.models.by_name):
            return None
        return "no worker answered" if not any_worker else "no model has a live worker"


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> Any:
    """Readiness: the broker is reachable and the default model (else any) has a live worker;
    the body lists the models without one."""
    answer = current_app.extensions["readiness"].check()
    body: dict[str, Any] = {"status": "ok" if answer.ready else "unavailable"}
    if answer.reason is not None:
        body["reason"] = answer.reason
    if answer.live is not None:
        body["models_without_workers"] = list(answer.without_workers)
    return body, 200 if answer.ready else 503


@bp.get("/metrics")
def metrics_view() -> Response:
    """Prometheus metrics (404 with ``METRICS_PUBLIC=false``)."""
    if not current_app.config["METRICS_PUBLIC"]:
        abort(404)
    return metrics.render()


def init_app(app: Flask) -> None:
    """Create the readiness probe for this app's Celery handle and models."""
    app.extensions["readiness"] = Readiness(app.extensions["celery"], app.extensions["models"],
                                            app.config["READY_CACHE_SECONDS"])
