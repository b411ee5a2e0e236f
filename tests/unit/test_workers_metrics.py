"""The worker's metrics carry its model, whatever reports them."""
from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from batching import batch_finished, batch_predicted
from workers import metrics, runtime

pytestmark = pytest.mark.unit


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_forward_passes_and_outcomes_are_counted_per_model() -> None:
    model = runtime.served().name
    before = (sample("inference_batch_size_count", model=model),
              sample("inference_requests_total", model=model, outcome="succeeded"),
              sample("inference_requests_total", model=model, outcome="expired"))
    batch_predicted.send(sender=None, size=3, seconds=0.03)
    batch_finished.send(sender=None, size=3, seconds=0.04, succeeded=3, failed=0)
    metrics.count_requests("expired")
    after = (sample("inference_batch_size_count", model=model),
             sample("inference_requests_total", model=model, outcome="succeeded"),
             sample("inference_requests_total", model=model, outcome="expired"))
    assert [b - a for a, b in zip(before, after, strict=True)] == [1.0, 3.0, 1.0]
