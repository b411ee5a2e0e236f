"""workers.lifecycle: the start-up banner and the warm-up sizes."""
from __future__ import annotations

from common.config import WorkerSettings, load
from workers.lifecycle import banner_lines, warmup_sizes
from workers.runtime import resolve


def banner(environ: dict[str, str]) -> list[str]:
    settings = load(WorkerSettings, environ)
    return banner_lines(settings, resolve(settings))


def test_the_banner_shows_the_device_settings_and_says_loudly_when_the_model_is_a_stand_in() -> None:
    lines = banner({"PRECISION": "fp16", "GPU_DECODE": "true"})
    assert "precision=fp16 gpu_decode=True" in lines and not any("BENCHMARK" in line for line in lines)
    assert any(line.startswith("BENCHMARK MODEL: MODEL=null") for line in banner({"MODEL": "null"}))
    assert any(line.startswith("BENCHMARK DEVICE: MODEL=simulated sleeps 5 ms + 2 ms per image")
               for line in banner({"MODEL": "simulated", "SIMULATED_BATCH_MS": "5"}))


def test_batch_mode_warms_every_size_it_can_run() -> None:
    def sizes(environ: dict[str, str]) -> list[int]:
        return list(warmup_sizes(resolve(load(WorkerSettings, environ)).batching))

    assert sizes({"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "3"}) == [1, 2, 3]
    assert sizes({"BATCH_SIZE": "3"}) == [1]
