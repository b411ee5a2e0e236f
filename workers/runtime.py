"""The worker process's settings and its classifier, each made once."""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

from common.config import WorkerSettings, load
from common.image_store import ImageStore

if TYPE_CHECKING:
    from workers.handler import ImageClassifier

__all__ = ["classifier", "configure", "default_torch_threads", "settings"]

_lock = threading.Lock()
_settings: WorkerSettings | None = None
_classifier: ImageClassifier | None = None


def configure(**overrides: Any) -> WorkerSettings:
    """Read this process's settings now, ``overrides`` winning (``python -m workers --batch``)."""
    global _settings
    with _lock:
        _settings = load(WorkerSettings, **overrides)
        return _settings


def settings() -> WorkerSettings:
    """This process's settings, read from the environment on first use."""
    global _settings
    with _lock:
        if _settings is None:
            _settings = load(WorkerSettings)
        return _settings


def default_torch_threads(current: WorkerSettings) -> int:
    """Cores divided among the pool's concurrent forward passes.

    Measured on 2 cores (docs/benchmarks.md): two passes of one thread each beat one
    pass of two threads, 66 vs 52 req/s individual and 73 vs 52 batched at 20 users.
    """
    return max(1, (os.cpu_count() or 1) // current.concurrency)


def _image_store() -> ImageStore | None:
    """The broker's image store (``common.image_store``), with the broker's socket timeout."""
    from workers.app import app

    return ImageStore.for_broker(str(app.conf.broker_url), float(app.conf.broker_connection_timeout))


def classifier() -> ImageClassifier:
    """The process's classifier: built once, its model loaded by its first use (``setup``)."""
    global _classifier
    current = settings()
    with _lock:
        if _classifier is None:
            from workers.accel import AccelConfig
            from workers.handler import ImageClassifier
            from workers.synthetic import SimulatedCost

            _classifier = ImageClassifier(
                current.model, current.model_weights, current.device, current.max_image_pixels,
                jit=current.model_jit, threads=current.torch_threads or default_torch_threads(current),
                max_decoded_bytes=int(current.max_decoded_mb * 2**20),
                accel=AccelConfig.from_settings(current),
                simulated=SimulatedCost(current.simulated_batch_ms, current.simulated_item_ms),
                images=_image_store())
        return _classifier
