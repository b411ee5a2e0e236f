"""Prometheus metrics: requests by route pattern (not raw path), status and model, admission and
backlog. A request's ``model`` label is the repository model it named or defaulted to (set by
``webapp.models.find``; empty for routes about no model): a request never adds a label value.

The backlog gauges are read when scraped (``_Backlog``): the broker queue's
length (the same for every web process: it is Redis' ``LLEN``) and this
process' waiting requests and the age of the oldest. With
``WEB_WORKERS`` > 1 those last two are the scraped process'.
"""
from __future__ import annotations

import time
from collections.abc import Iterator

from flask import Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["Metrics", "for_model", "init_app", "register_backlog", "rejected", "render", "revoked"]

#: Seconds; spans a cached answer up to a full RESULT_TIMEOUT.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The app's metric objects, in a registry of their own (one per app)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "webapp_http_requests_total", "HTTP requests answered.",
            ["method", "route", "status", "model"], registry=registry)
        self.latency = Histogram(
            "webapp_http_request_duration_seconds", "Time to answer an HTTP request.",
            ["method", "route", "status", "model"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.rejected = Counter(
            "webapp_rejected_requests_total", "Requests refused with 503 before their task was sent.",
            ["reason", "model"], registry=registry)
        self.revoked = Counter(
            "webapp_revoked_tasks_total",
            "Tasks revoked because their synchronous request's deadline passed.", ["model"],
            registry=registry)


class _Backlog(Collector):
    """Gauges read at scrape time from the app's admission objects."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        waiting = self.app.extensions["waiting_requests"]
        queue = GaugeMetricFamily(
            "webapp_queue_length", "Tasks waiting in a broker queue (-1: unknown).",
            labels=["queue", "model"])
        for model in self.app.extensions["models"].by_name.values():
            for bounded in model.queues.values():
                length = bounded.length.get()
                queue.add_metric([bounded.name, model.name], -1 if length is None else length)
        yield queue
        yield GaugeMetricFamily(
            "webapp_waiting_requests", "Synchronous requests this process has waiting for a result.",
            value=waiting.count())
        yield GaugeMetricFamily(
            "webapp_oldest_waiting_request_age_seconds",
            "Seconds the oldest waiting synchronous request of this process has waited.",
            value=waiting.oldest_age())


def for_model(name: str) -> None:
    """Label the current request's metrics with model ``name``."""
    g.metrics_model = name


def _model() -> str:
    return str(g.get("metrics_model", ""))


def rejected(app: Flask, reason: str) -> None:
    """Count a request refused by admission control."""
    app.extensions["metrics"].rejected.labels(reason, _model()).inc()


def revoked(app: Flask) -> None:
    """Count a task revoked at its request's deadline."""
    app.extensions["metrics"].revoked.labels(_model()).inc()


def register_backlog(app: Flask) -> None:
    """Add the backlog gauges (call once the admission objects exist)."""
    app.extensions["metrics"].registry.register(_Backlog(app))


def _route() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else "<unmatched>"


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _observe(response: Response) -> Response:
    started = g.pop("metrics_started", None)
    if started is not None:
        metrics: Metrics = current_app.extensions["metrics"]
        labels = (request.method, _route(), str(response.status_code), _model())
        metrics.requests.labels(*labels).inc()
        metrics.latency.labels(*labels).observe(time.perf_counter() - started)
    return response


def render() -> Response:
    """The exposition of this app's metrics, or of all gunicorn workers' in multi-process mode."""
    if current_app.config.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, current_app.config["PROMETHEUS_MULTIPROC_DIR"])
        registry.register(_Backlog(current_app._get_current_object()))  # type: ignore[attr-defined]
    else:
        registry = current_app.extensions["metrics"].registry
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> Metrics:
    """Create the metrics and time every request."""
    metrics = Metrics(CollectorRegistry(auto_describe=True))
    app.extensions["metrics"] = metrics
    app.before_request(_start_timer)
    app.after_request(_observe)
    return metrics
