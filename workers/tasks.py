"""Celery entry points: one image per task, or one forward pass per batch.

Both modes live side by side: ``workers.classify`` runs the handler's
``predict`` on one image; ``workers.classify_batch`` is a
:class:`batching.Batches` task whose ``run`` hands a whole group to
``predict_batch``. The web app picks the name; a worker serves both.
"""
from __future__ import annotations

import time
from typing import Any

from celery import shared_task
from celery.utils.log import get_task_logger
from kombu.utils.uuid import uuid

from batching import Batches, SimpleRequest
from workers import metrics, runtime
from workers.exceptions import InvalidImageError

__all__ = ["ClassifyBatch", "classify", "classify_batch", "ping"]

logger = get_task_logger(__name__)


@shared_task(name="workers.ping")
def ping() -> str:
    """Round trip through the queue (tests and health checks wait on it)."""
    return "pong"


@shared_task(name="workers.classify", throws=(InvalidImageError,))
def classify(image: bytes, top_k: int) -> dict[str, Any]:
    """Classify one image with one forward pass."""
    started_at = time.time()
    begin = time.perf_counter()
    result = runtime.handler().predict(image, top_k)
    elapsed = time.perf_counter() - begin
    metrics.observe_inference(1, elapsed)
    return _annotate(result, mode="individual", batch_size=1, batch_id=None,
                     started_at=started_at, seconds=elapsed)


class ClassifyBatch(Batches):
    """Decode each image as it arrives, so decoding overlaps the running batch."""

    def prepare(self, request: SimpleRequest) -> Any:
        """Decode and preprocess one upload."""
        return runtime.handler().decode_request(request.args[0])


@shared_task(base=ClassifyBatch, bind=True, name="workers.classify_batch",
             throws=(InvalidImageError,))
def classify_batch(self: ClassifyBatch, requests: list[SimpleRequest]) -> list[dict[str, Any]]:
    """Classify a group of images in one forward pass; one result per request."""
    started_at = time.time()
    begin = time.perf_counter()
    results = runtime.handler().predict_batch(
        [r.prepared for r in requests], [int(r.args[1]) for r in requests])
    elapsed = time.perf_counter() - begin
    metrics.observe_inference(len(requests), elapsed)
    batch_id = uuid()
    return [_annotate(result, mode="batch", batch_size=len(requests), batch_id=batch_id,
                      started_at=started_at, seconds=elapsed) for result in results]


def _annotate(result: dict[str, Any], *, mode: str, batch_size: int, batch_id: str | None,
              started_at: float, seconds: float) -> dict[str, Any]:
    return {**result, "mode": mode, "batch_size": batch_size, "batch_id": batch_id,
            "started_at": started_at, "timings_ms": {"inference": round(seconds * 1000, 3)}}
