"""Liveness, readiness and metrics endpoints."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, abort, current_app

from celery import Celery

from . import metrics

__all__ = ["Readiness", "bp", "init_app", "ping_broker", "ping_workers"]

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__)

#: Seconds for the broker connection and for workers to answer ping (the
#: worker ping fits in Readiness.answer_within when the broker answers).
_BROKER_TIMEOUT = 1.0
_PING_TIMEOUT = 0.8


def ping_broker(celery: Celery) -> None:
    """Raise unless the broker accepts a connection within about a second."""
    with celery.connection_for_write(connect_timeout=_BROKER_TIMEOUT) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=_BROKER_TIMEOUT)


def ping_workers(celery: Celery) -> list[dict[str, Any]]:
    """Return the replies of workers to a broadcast ping (stops at the first)."""
    return celery.control.ping(timeout=_PING_TIMEOUT, limit=1) or []


@dataclass(frozen=True)
class _Answer:
    ready: bool
    reason: str | None = None


class Readiness:
    """Cached readiness probe, never blocking a request on the broker.

    At most one probe (broker, then worker ping) runs at a time, in a thread
    of its own, and at most once per ``cache_seconds``. A request waits for a
    running probe at most ``answer_within`` seconds, then answers with the
    last answer (or "not ready" when there is none): ``/readyz`` answers in
    about a second whatever the broker does.
    """

    def __init__(self, celery: Celery, cache_seconds: float, answer_within: float = 1.0) -> None:
        if cache_seconds < 0:
            raise ValueError(f"cache_seconds must be >= 0, got {cache_seconds!r}")
        self.celery = celery
        self.cache_seconds = cache_seconds
        self.answer_within = answer_within
        self._lock = threading.Lock()
        self._answer: _Answer | None = None
        self._checked_at = 0.0
        self._probing: threading.Event | None = None

    def check(self) -> _Answer:
        """Return the cached answer, or start (or join) a probe when it is stale."""
        with self._lock:
            answer = self._answer
            if answer is not None and time.monotonic() - self._checked_at < self.cache_seconds:
                return answer
            done = self._probing
            if done is None:
                done = self._probing = threading.Event()
                threading.Thread(target=self._run_probe, args=(done,), name="readiness-probe",
                                 daemon=True).start()
        if done.wait(self.answer_within):
            with self._lock:
                return self._answer or _Answer(False, "readiness probe failed")
        return answer or _Answer(False, f"broker did not answer within {self.answer_within:g} s")

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
            replies = ping_workers(self.celery)
        except Exception as exc:  # noqa: BLE001
            logger.warning("Readiness: worker ping failed: %s", exc)
            return _Answer(False, f"worker ping failed: {exc}")
        if not replies:
            return _Answer(False, "no worker answered ping")
        return _Answer(True)


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> Any:
    """Readiness: the broker is reachable and a worker answers ping."""
    answer = current_app.extensions["readiness"].check()
    if answer.ready:
        return {"status": "ok"}
    return {"status": "unavailable", "reason": answer.reason}, 503


@bp.get("/metrics")
def metrics_view() -> Response:
    """Prometheus metrics (404 with ``METRICS_PUBLIC=false``)."""
    if not current_app.config["METRICS_PUBLIC"]:
        abort(404)
    return metrics.render()


def init_app(app: Flask) -> None:
    """Create the readiness probe for this app's Celery handle."""
    app.extensions["readiness"] = Readiness(app.extensions["celery"], app.config["READY_CACHE_SECONDS"])
