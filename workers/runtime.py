"""The worker process's settings and model handler, each made once."""
from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from workers.settings import WorkerSettings

if TYPE_CHECKING:
    from workers.handler import ImageClassifier

__all__ = ["configure", "handler", "settings"]

_lock = threading.Lock()
_settings: WorkerSettings | None = None
_handler: ImageClassifier | None = None


def configure(value: WorkerSettings) -> None:
    """Fix this process's settings (``python -m workers`` does, from argv and env)."""
    global _settings
    with _lock:
        _settings = value


def settings() -> WorkerSettings:
    """This process's settings, read from the environment on first use."""
    global _settings
    with _lock:
        if _settings is None:
            _settings = WorkerSettings.from_env()
        return _settings


def default_torch_threads(current: WorkerSettings) -> int:
    """Cores divided among the pool's concurrent forward passes.

    Measured on 2 cores (docs/benchmarks.md): two passes of one thread each beat one
    pass of two threads, 66 vs 52 req/s individual and 73 vs 52 batched at 20 users.
    """
    return max(1, (os.cpu_count() or 1) // current.concurrency)


def handler() -> ImageClassifier:
    """The model handler, set up once per process (after fork, for prefork)."""
    global _handler
    current = settings()
    with _lock:
        if _handler is None:
            import torch

            from workers.handler import ImageClassifier
            from workers.model import resolve_device

            torch.set_num_threads(current.torch_threads or default_torch_threads(current))
            device = resolve_device(current.device)
            classifier = ImageClassifier(current.model, current.model_weights, device,
                                         current.max_image_pixels, jit=current.model_jit)
            classifier.setup(device)
            # The first pass at each input shape pays a one-time setup cost.
            classifier.warmup(range(1, current.batch_size + 1) if current.batch_mode else (1,))
            _handler = classifier
        return _handler
