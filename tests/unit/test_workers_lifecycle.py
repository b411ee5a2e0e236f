"""workers.lifecycle: the start-up banner and the warm-up sizes."""
from __future__ import annotations

from common.config import WorkerSettings, load
from workers.lifecycle import banner_lines, warmup_sizes
from workers.runtime import resolve


def banner(environ: dict[str, str]) -> list[str]:
    settings = load(WorkerSettings, environ)
    return banner_lines(settings, resolve(settings))


def sizes(environ: dict[str, str]) -> list[int]:
    return list(warmup_sizes(resolve(load(WorkerSettings, environ)).batching))


def test_the_banner_shows_the_device_settings() -> None:
    lines = banner({"AUTOCAST": "fp16", "CUDNN_BENCHMARK": "true"})
    assert "autocast=fp16 channels_last=True pin_memory=True cudnn_benchmark=True gpu_decode=False " \
           "cuda_copy_stream=False" in lines
    assert not any("BENCHMARK" in line for line in lines)


def test_the_banner_says_loudly_when_the_model_is_a_benchmark_stand_in() -> None:
    null = banner({"MODEL": "null"})
    simulated = banner({"MODEL": "simulated", "SIMULATED_BATCH_MS": "5"})
    assert any(line.startswith("BENCHMARK MODEL: MODEL=null") for line in null)
    assert any(line.startswith("BENCHMARK DEVICE: MODEL=simulated sleeps 5 ms + 2 ms per image")
               for line in simulated)


def test_batch_mode_warms_every_size_it_can_run() -> None:
    assert sizes({"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "3"}) == \
        [1, 2, 3]
    assert sizes({"BATCH_SIZE": "3"}) == [1]
