"""What operators read: readiness and Prometheus metrics (by route pattern, never the raw path)."""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest, multiprocess
from prometheus_client import Counter as CounterMetric
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from celery import Celery
from celery.backends.base import BaseKeyValueStoreBackend

from common.contract import model_failure_key

from .admission import WaitingRequests
from .models import WebModel, WebModels

__all__ = ["Metrics", "Readiness", "model_failures", "ping_broker", "worker_queues"]

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_PING_TIMEOUT = 0.8  # seconds the workers have to answer; within Readiness.answer_within
_MISSED_PROBES = 1  # a worker may miss (busy, a lost reply) before its models count as without one


def ping_broker(celery: Celery) -> None:
    """Raise unless the broker accepts a connection."""
    timeout = float(celery.conf.broker_connection_timeout)
    with celery.connection_for_write(connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)


def worker_queues(celery: Celery) -> list[list[str]]:
    """The queues each live worker consumes, one list per reply (two workers of one name both count)."""
    replies = celery.control.broadcast("active_queues", reply=True, timeout=_PING_TIMEOUT) or []
    return [[str(queue["name"]) for queue in queues or ()] for reply in replies for queues in reply.values()]


def model_failures(celery: Celery, names: list[str]) -> dict[str, str]:
    """Why each of ``names`` last failed to load, as its workers recorded it."""
    backend = celery.backend
    if not names or not isinstance(backend, BaseKeyValueStoreBackend):
        return {}
    values = backend.mget([model_failure_key(name) for name in names])
    return {name: (raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw))
            for name, raw in zip(names, values, strict=True) if raw is not None}


@dataclass(frozen=True)
class Answer:
    """One readiness probe's answer; ``live``: workers per queue (None: unknown, no broker)."""

    ready: bool
    reason: str | None = None
    live: dict[str, int] | None = None
    failures: dict[str, str] = field(default_factory=dict)
    without_workers: tuple[str, ...] = ()

    def why_not(self, model: WebModel) -> str | None:
        """Why ``model`` cannot serve now; None when it can or nobody knows yet."""
        if model.broken is not None:
            return model.broken
        if self.live is None or model.queue in self.live:
            return None
        if model.name in self.failures:
            return f"its workers failed to load it: {self.failures[model.name]}"
        return f"no live worker consumes its queue {model.queue}"


class Readiness:
    """A readiness probe in a thread of its own, at most once per ``cache_seconds``: never a hung request."""

    def __init__(self, celery: Celery, models: WebModels, cache_seconds: float,
                 answer_within: float = 1.0) -> None:
        self.celery, self.models = celery, models
        self.cache_seconds, self.answer_within = cache_seconds, answer_within
        self._lock = threading.Lock()
        self._answer: Answer | None = None
        self._checked_at = 0.0
        self._probing: threading.Event | None = None
        self._probes: list[float] = []  # their times
        self._seen: dict[str, tuple[float, int]] = {}  # queue: when last seen consumed, by how many

    def latest(self) -> Answer | None:
        """The last answer at once, for the request path (a stale one starts a probe)."""
        with self._lock:
            if self._probing is None and time.monotonic() - self._checked_at >= self.cache_seconds:
                self._start_probe()
            return self._answer

    def check(self) -> Answer:
        """The cached answer, or that of a probe started (or joined) when it is stale."""
        with self._lock:
            answer = self._answer
            if answer is not None and time.monotonic() - self._checked_at < self.cache_seconds:
                return answer
            done = self._probing or self._start_probe()
        if done.wait(self.answer_within):
            with self._lock:
                return self._answer or Answer(False, "readiness probe failed")
        return answer or Answer(False, f"broker did not answer within {self.answer_within:g} s")

    def _start_probe(self) -> threading.Event:
        done = self._probing = threading.Event()

        def run() -> None:
            try:
                answer = self._probe()
            except Exception as exc:  # noqa: BLE001 - the probe thread must always finish
                answer = Answer(False, f"readiness probe failed: {exc}")
            with self._lock:
                self._answer, self._checked_at, self._probing = answer, time.monotonic(), None
            done.set()

        threading.Thread(target=run, name="readiness-probe", daemon=True).start()
        return done

    def _probe(self) -> Answer:
        for step, what in ((ping_broker, "broker unreachable"), (worker_queues, "asking the workers failed")):
            try:
                nodes = step(self.celery)
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                logger.warning("Readiness: %s: %s", what, exc)
                return Answer(False, f"{what}: {exc}")
        live = self._remember(Counter(queue for queues in nodes or () for queue in queues))
        models = self.models.by_name
        try:
            failures = model_failures(self.celery, sorted(name for name, model in models.items()
                                                          if model.queue not in live))
        except Exception as exc:  # noqa: BLE001 - only the reasons are lost
            logger.warning("Readiness: reading the models' load failures failed: %s", exc)
            failures = {}
        answer = Answer(False, None, live, failures)
        without = tuple(sorted(name for name, model in models.items() if answer.why_not(model) is not None))
        default = self.models.default_model
        if default is not None:
            why = answer.why_not(default)
            reason = None if why is None else f"the default model {default.name} cannot serve: {why}"
        elif len(without) < len(models):
            reason = None
        else:
            reason = "no model has a live worker" if nodes else "no worker answered"
        return replace(answer, ready=reason is None, reason=reason, without_workers=without)

    def _remember(self, workers: Counter[str]) -> dict[str, int]:
        """The queues seen consumed in this probe or the ``_MISSED_PROBES`` before, with their workers."""
        now = time.monotonic()
        self._probes = [*self._probes[-_MISSED_PROBES:], now]
        self._seen.update({queue: (now, count) for queue, count in workers.items()})
        return {queue: count for queue, (seen, count) in self._seen.items() if seen >= self._probes[0]}


class Metrics(Collector):
    """The app's metrics (every gunicorn worker's in ``multiproc_dir``); backlog gauges read when scraped."""

    def __init__(self, multiproc_dir: str | None, models: WebModels, waiting: WaitingRequests) -> None:
        self.multiproc_dir, self.models, self.waiting = multiproc_dir, models, waiting
        self.registry = registry = CollectorRegistry(auto_describe=True)
        labels = ["method", "route", "status", "model"]
        self.requests = CounterMetric("webapp_http_requests_total", "HTTP requests answered.", labels,
                                      registry=registry)
        self.latency = Histogram("webapp_http_request_duration_seconds", "Time to answer an HTTP request.",
                                 labels, buckets=_LATENCY_BUCKETS, registry=registry)
        self.rejected = CounterMetric("webapp_rejected_requests_total",
                                      "Requests refused with 503 before their task was sent.",
                                      ["reason", "model"], registry=registry)
        self.revoked = CounterMetric("webapp_revoked_tasks_total",
                                     "Tasks revoked because their synchronous request's deadline passed.",
                                     ["model"], registry=registry)
        registry.register(self)

    def init_app(self, app: Flask) -> None:
        app.before_request(lambda: setattr(g, "metrics_started", time.perf_counter()))
        app.after_request(self._observe)

    def _observe(self, response: Response) -> Response:
        started = g.pop("metrics_started", None)
        if started is not None:
            rule = request.url_rule
            labels = (request.method, rule.rule if rule else "<unmatched>", str(response.status_code),
                      str(g.get("metrics_model", "")))
            self.requests.labels(*labels).inc()
            self.latency.labels(*labels).observe(time.perf_counter() - started)
        return response

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily("webapp_queue_length", "Tasks waiting in a broker queue (-1: unknown).",
                                  labels=["queue", "model"])
        for model in self.models.by_name.values():
            for bounded in model.queues.values():
                length = bounded.length.get()
                queue.add_metric([bounded.name, model.name], -1 if length is None else length)
        yield queue
        yield GaugeMetricFamily("webapp_waiting_requests",
                                "Synchronous requests this process has waiting for a result.",
                                value=self.waiting.count())
        yield GaugeMetricFamily("webapp_oldest_waiting_request_age_seconds",
                                "Seconds the oldest waiting synchronous request of this process has waited.",
                                value=self.waiting.oldest_age())

    def render(self) -> Response:
        """The exposition: this app's, or every gunicorn worker's in multi-process mode."""
        registry = self.registry
        if self.multiproc_dir:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, self.multiproc_dir)
            registry.register(self)
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
