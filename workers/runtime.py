"""The worker process's settings and model handler, each made once."""
from __future__ import annotations

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


def handler() -> ImageClassifier:
    """The model handler, set up once per process (after fork, for prefork)."""
    global _handler
    current = settings()
    with _lock:
        if _handler is None:
            import torch

            from workers.handler import ImageClassifier
            from workers.model import resolve_device

            if current.torch_threads:
                torch.set_num_threads(current.torch_threads)
            device = resolve_device(current.device)
            classifier = ImageClassifier(current.model, current.model_weights, device,
                                         current.max_image_pixels)
            classifier.setup(device)
            _handler = classifier
        return _handler
