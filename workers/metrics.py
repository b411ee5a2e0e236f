"""The worker's Prometheus metrics and per-batch log line; every request is counted once, by outcome."""
from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from celery import signals, states

from batching import batch_dispatched, batch_finished, batch_predicted
from common.contract import CLASSIFY_BATCH_TASK, CLASSIFY_TASK
from workers import runtime

__all__ = ["BATCH_SIZE_METRIC", "BATCH_WAIT_METRIC", "FORWARD_METRIC", "count_requests", "serve"]

#: Metric names the load-test driver reads.
BATCH_SIZE_METRIC = "inference_batch_size"
BATCH_WAIT_METRIC = "inference_batch_wait_seconds"
FORWARD_METRIC = "inference_forward_seconds"

logger = logging.getLogger("workers.batches")

_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12)

_MODEL = ["model"]
BATCH_SIZE = Histogram(BATCH_SIZE_METRIC, "Requests per forward pass", _MODEL, buckets=_SIZE_BUCKETS)
BATCH_WAIT = Histogram(BATCH_WAIT_METRIC, "Age of the oldest request when its batch was dispatched",
                       _MODEL, buckets=_TIME_BUCKETS)
FORWARD = Histogram(FORWARD_METRIC, "Time of one forward pass (one batch)", _MODEL, buckets=_TIME_BUCKETS)
PER_IMAGE = Histogram("inference_per_image_seconds", "Forward-pass time divided by batch size", _MODEL,
                      buckets=_TIME_BUCKETS)
REQUESTS = Counter("inference_requests", "Requests finished, by outcome", ["model", "outcome"])  # _total
QUEUE_DEPTH = Gauge("inference_queue_depth", "Requests buffered in the worker, waiting for a batch", _MODEL)


def _model() -> str:
    return runtime.served().name  # one per process


def count_requests(outcome: str, count: int = 1) -> None:
    """``count`` requests finished with ``outcome`` (succeeded, failed, expired, revoked)."""
    REQUESTS.labels(_model(), outcome).inc(count)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Expose /metrics on ``host:port`` (port 0: don't); a port in use is logged, not fatal."""
    if not port:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        logger.warning("Worker metrics not served on %s:%d: %s", host, port, exc)
    else:
        logger.info("Worker metrics on http://%s:%d/metrics", host, port)


@batch_predicted.connect
def _on_predicted(sender: Any = None, size: int = 0, seconds: float = 0.0, **_: Any) -> None:
    """One forward pass over ``size`` images (both modes)."""
    model = _model()
    BATCH_SIZE.labels(model).observe(size)
    FORWARD.labels(model).observe(seconds)
    PER_IMAGE.labels(model).observe(seconds / size)


@batch_dispatched.connect
def _on_dispatched(sender: Any = None, size: int = 0, wait: float = 0.0, queue_depth: int = 0,
                   expired: int = 0, **_: Any) -> None:
    model = _model()
    QUEUE_DEPTH.labels(model).set(queue_depth)
    if size:
        BATCH_WAIT.labels(model).observe(wait)
    if expired:  # counted by _on_revoked
        logger.warning("Dropped %d expired requests before inference", expired)


@batch_finished.connect
def _on_finished(sender: Any = None, size: int = 0, seconds: float = 0.0, succeeded: int = 0,
                 failed: int = 0, **_: Any) -> None:
    """A batch's outcomes, and the seed guide's log line."""
    count_requests("succeeded", succeeded)
    if failed:
        count_requests("failed", failed)
    if size:
        logger.info("Batch processed %d jobs in %.3fs (%.3fs per image), model %s", size, seconds,
                    seconds / size, _model())


@signals.task_postrun.connect
def _on_single_task(sender: Any = None, state: str | None = None, **_: Any) -> None:
    if getattr(sender, "name", None) == CLASSIFY_TASK and state != states.IGNORED:  # IGNORED: not run
        count_requests("succeeded" if state == states.SUCCESS else "failed")


@signals.task_revoked.connect
def _on_revoked(sender: Any = None, expired: bool = False, **_: Any) -> None:
    """From Celery (expired on receipt or in the pool's queue) and ``batching`` (in its buffer)."""
    if getattr(sender, "name", None) in (CLASSIFY_TASK, CLASSIFY_BATCH_TASK):
        count_requests("expired" if expired else "revoked")
