"""The worker's metrics carry its model, and count each request once by outcome, whatever reports it."""
from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from celery import signals, states

from batching import batch_finished, batch_predicted
from common.contract import CLASSIFY_BATCH_TASK, CLASSIFY_TASK
from workers import metrics, runtime

pytestmark = pytest.mark.unit


def test_forward_passes_and_outcomes_are_counted_per_model() -> None:
    model = runtime.served().name

    def samples() -> list[float]:
        return [REGISTRY.get_sample_value("inference_batch_size_count", {"model": model}) or 0.0,
                *(REGISTRY.get_sample_value("inference_requests_total", {"model": model, "outcome": o}) or 0.0
                  for o in ("succeeded", "failed", "expired", "revoked"))]

    before = samples()
    batch_predicted.send(sender=None, size=3, seconds=0.03)
    batch_finished.send(sender=None, size=3, seconds=0.04, succeeded=3, failed=0)
    metrics.count_requests("expired")
    single, batched = (type("Task", (), {"name": name}) for name in (CLASSIFY_TASK, CLASSIFY_BATCH_TASK))
    signals.task_postrun.send(sender=single, state=states.FAILURE)
    signals.task_postrun.send(sender=single, state=states.IGNORED)  # never ran: counted as revoked/expired
    signals.task_postrun.send(sender=batched, state=states.SUCCESS)  # batches count per request
    signals.task_revoked.send(sender=batched, expired=True)
    signals.task_revoked.send(sender=single, expired=False)
    assert [b - a for a, b in zip(before, samples(), strict=True)] == [1.0, 3.0, 1.0, 2.0, 1.0]
