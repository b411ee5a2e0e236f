"""Liveness, readiness and metrics endpoints."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app

from celery import Celery

from . import metrics

__all__ = ["Readiness", "bp", "init_app", "ping_broker", "ping_workers"]

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__)

#: Seconds for the broker connection and for workers to answer ping.
_BROKER_TIMEOUT = 1.0
_PING_TIMEOUT = 1.0


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
    """Cached readiness probe: at most one broker/worker check per ``cache_seconds``."""

    def __init__(self, celery: Celery, cache_seconds: float) -> None:
        if cache_seconds < 0:
            raise ValueError(f"cache_seconds must be >= 0, got {cache_seconds!r}")
        self.celery = celery
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._answer: _Answer | None = None
        self._checked_at = 0.0

    def check(self) -> _Answer:
        """Return the cached answer, or probe (one thread at a time) when it is stale."""
        with self._lock:
            if self._answer is None or time.monotonic() - self._checked_at >= self.cache_seconds:
                self._answer = self._probe()
                self._checked_at = time.monotonic()
            return self._answer

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
    """Prometheus metrics."""
    return metrics.render()


def init_app(app: Flask) -> None:
    """Create the readiness probe for this app's Celery handle."""
    app.extensions["readiness"] = Readiness(app.extensions["celery"], app.config["READY_CACHE_SECONDS"])
