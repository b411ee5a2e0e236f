"""Prometheus request metrics, labelled by route pattern (not raw path) and status."""
from __future__ import annotations

import time

from flask import Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = ["Metrics", "init_app", "render"]

#: Seconds; spans a cached answer up to a full RESULT_TIMEOUT.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The app's metric objects, in a registry of their own (one per app)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "webapp_http_requests_total", "HTTP requests answered.",
            ["method", "route", "status"], registry=registry)
        self.latency = Histogram(
            "webapp_http_request_duration_seconds", "Time to answer an HTTP request.",
            ["method", "route", "status"], buckets=_LATENCY_BUCKETS, registry=registry)


def _route() -> str:
    rule = request.url_rule
    return rule.rule if rule is not None else "<unmatched>"


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _observe(response: Response) -> Response:
    started = g.pop("metrics_started", None)
    if started is not None:
        metrics: Metrics = current_app.extensions["metrics"]
        labels = (request.method, _route(), str(response.status_code))
        metrics.requests.labels(*labels).inc()
        metrics.latency.labels(*labels).observe(time.perf_counter() - started)
    return response


def render() -> Response:
    """The exposition of this app's metrics, or of all gunicorn workers' in multi-process mode."""
    if current_app.config.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, current_app.config["PROMETHEUS_MULTIPROC_DIR"])
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
