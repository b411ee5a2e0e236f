"""workers.runtime: the process's settings, read once, and its one classifier."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from workers import runtime
from workers.accel import AccelConfig
from workers.synthetic import SimulatedCost


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts as a new worker process would: nothing read yet (and the next test's too)."""
    for name in ("USE_BATCH_PROCESSING", "BATCH_SIZE", "WORKER_POOL", "WORKER_CONCURRENCY", "TORCH_THREADS",
                 "MODEL", "PRECISION", "GPU_DECODE", "SIMULATED_BATCH_MS", "SIMULATED_ITEM_MS"):
        monkeypatch.delenv(name, raising=False)
    forget()
    yield
    forget()


def forget() -> None:
    runtime._overrides.clear()
    for made_once in (runtime.settings, runtime.served, runtime.classifier):
        made_once.cache_clear()


def test_defaults_follow_the_seed_guide_and_the_batch_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    s = runtime.settings()
    assert (s.batch_mode, s.batch_size, s.batch_timeout, s.batch_policy) == (False, 4, 2.0, "timeout")
    assert runtime.settings() is s  # read once
    monkeypatch.setenv("USE_BATCH_PROCESSING", "false")
    assert runtime.configure(batch_mode=True).batch_mode is True
    assert runtime.settings().batch_mode is True and runtime.served().batching.enabled is True


def test_cores_are_shared_among_concurrent_forward_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 8)
    monkeypatch.setenv("WORKER_CONCURRENCY", "2")
    classifier = runtime.classifier()
    assert classifier.threads == 4 and runtime.classifier() is classifier and classifier.model is None
    monkeypatch.setenv("WORKER_POOL", "solo")  # the solo pool runs one task at a time
    assert runtime.configure().concurrency == 1


def test_device_and_simulated_settings_reach_the_classifier(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, raw in {"PRECISION": "BF16", "GPU_DECODE": "yes", "USE_BATCH_PROCESSING": "true",
                      "MODEL": "simulated", "SIMULATED_BATCH_MS": "5", "SIMULATED_ITEM_MS": "0.25"}.items():
        monkeypatch.setenv(name, raw)
    with pytest.warns(UserWarning, match="benchmark stand-in"):
        classifier = runtime.classifier()
    assert classifier.accel == AccelConfig("bf16", gpu_decode=True, batch_mode=True)
    assert (classifier.model_name, classifier.simulated) == ("simulated", SimulatedCost(5.0, 0.25))
