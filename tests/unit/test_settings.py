"""Worker settings: parsed once, checked at start."""
from __future__ import annotations

import pytest

from workers.exceptions import ConfigError
from workers.settings import WorkerSettings


def test_defaults_follow_the_seed_guide() -> None:
    s = WorkerSettings.from_env({})
    assert (s.batch_mode, s.batch_size, s.batch_timeout, s.batch_policy) == (False, 4, 2.0, "timeout")
    assert s.model == "efficientnet_lite0" and s.model_weights is None and s.device == "auto"
    assert s.mode == "individual"


def test_environment_and_batch_flag() -> None:
    env = {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "8", "BATCH_TIMEOUT": "0.5",
           "BATCH_POLICY": "adaptive", "MODEL": "resnet50", "MODEL_WEIGHTS": "random"}
    s = WorkerSettings.from_env(env)
    assert (s.mode, s.batch_size, s.batch_timeout, s.batch_policy) == ("batch", 8, 0.5, "adaptive")
    assert (s.model, s.model_weights) == ("resnet50", "random")
    assert WorkerSettings.from_env({}, batch=True).batch_mode is True
    assert WorkerSettings.from_env({"USE_BATCH_PROCESSING": "true"}, batch=None).batch_mode is True


def test_solo_pool_runs_one_task_at_a_time() -> None:
    assert WorkerSettings.from_env({"WORKER_POOL": "solo", "WORKER_CONCURRENCY": "4"}).concurrency == 1


@pytest.mark.parametrize(("name", "value"), [
    ("BATCH_SIZE", "0"), ("BATCH_SIZE", "-3"), ("BATCH_SIZE", "four"), ("BATCH_SIZE", "2.5"),
    ("BATCH_TIMEOUT", "0"), ("BATCH_TIMEOUT", "-1"), ("BATCH_TIMEOUT", "soon"),
    ("BATCH_TIMEOUT", "nan"), ("BATCH_TIMEOUT", "inf"), ("BATCH_POLICY", "greedy"),
    ("USE_BATCH_PROCESSING", "maybe"), ("DEVICE", "tpu"), ("WORKER_POOL", "eventlet"),
    ("WORKER_METRICS_PORT", "70000"), ("TORCH_THREADS", "0"),
])
def test_bad_values_name_their_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        WorkerSettings.from_env({name: value})
