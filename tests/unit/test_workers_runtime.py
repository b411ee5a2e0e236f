"""workers.runtime: the process's settings, read once, and its one classifier."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from common.config import ConfigError
from workers import runtime


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts as a new worker process would: nothing read yet."""
    monkeypatch.setattr(runtime, "_settings", None)
    monkeypatch.setattr(runtime, "_classifier", None)
    for name in ("USE_BATCH_PROCESSING", "BATCH_SIZE", "WORKER_POOL", "WORKER_CONCURRENCY", "TORCH_THREADS"):
        monkeypatch.delenv(name, raising=False)
    yield


def test_defaults_follow_the_seed_guide() -> None:
    s = runtime.settings()
    assert (s.batch_mode, s.batch_size, s.batch_timeout, s.batch_policy) == (False, 4, 2.0, "timeout")
    assert s.mode == "individual" and runtime.settings() is s  # read once


def test_the_batch_flag_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USE_BATCH_PROCESSING", "false")
    assert runtime.configure(batch_mode=True).mode == "batch"
    assert runtime.settings().batch_mode is True


def test_a_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_SIZE", "zero")
    with pytest.raises(ConfigError, match="BATCH_SIZE"):
        runtime.configure()


def test_solo_pool_runs_one_task_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_POOL", "solo")
    monkeypatch.setenv("WORKER_CONCURRENCY", "4")
    assert runtime.settings().concurrency == 1


def test_cores_are_shared_among_concurrent_forward_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 8)
    monkeypatch.setenv("WORKER_CONCURRENCY", "2")
    assert runtime.default_torch_threads(runtime.settings()) == 4
    assert runtime.classifier().threads == 4


def test_one_classifier_per_process_built_without_loading_the_model() -> None:
    classifier = runtime.classifier()
    assert runtime.classifier() is classifier and classifier.model is None
