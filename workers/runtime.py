"""The worker process's settings, the model it serves and its classifier, each made once."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common.config import WorkerSettings, load, value
from common.image_store import ImageStore
from common.repository import BatchingConfig, ModelSpec, RepositoryError, queues_of, scan

if TYPE_CHECKING:
    from workers.handler import ImageClassifier

__all__ = ["ServedModel", "classifier", "configure", "resolve", "served", "settings"]

#: What ``python -m workers`` sets over the environment (``--batch``).
_overrides: dict[str, Any] = {}


@dataclass(frozen=True)
class ServedModel:
    """What this worker serves: its repository entry (None: built-in), its batching and its queues."""

    spec: ModelSpec | None
    name: str
    batching: BatchingConfig
    queue: str
    async_queue: str


def configure(**overrides: Any) -> WorkerSettings:
    """Read this process's settings now, ``overrides`` winning (``python -m workers --batch``)."""
    _overrides.clear()
    _overrides.update(overrides)
    settings.cache_clear()
    served.cache_clear()
    return settings()


# Each made by its first call, at import in the main process (workers.tasks): before any thread.
@functools.cache
def settings() -> WorkerSettings:
    return load(WorkerSettings, **_overrides)


@functools.cache
def served() -> ServedModel:
    return resolve(settings())


def resolve(current: WorkerSettings) -> ServedModel:
    """``MODEL``, else the repository's default, else the built-in one (also with ``MODEL_WEIGHTS``)."""
    from workers.model import DEFAULT_MODEL, ModelLoadError

    try:
        repository = scan(current.model_repository)
    except RepositoryError:
        repository = None  # no repository: a built-in architecture only
    spec = None
    default = repository.default_name(current.default_model) if repository else None
    name = current.model or default
    if repository is not None and current.model_weights is None:
        if name is None:
            raise ModelLoadError(f"MODEL is unset and {current.model_repository} holds several models but no "
                                 f"DEFAULT_MODEL: set MODEL to one of {', '.join(sorted(repository.models))}")
        broken = repository.broken.get(name)
        if broken is not None:
            raise ModelLoadError(broken.reason)
        spec = repository.models.get(name)
    # A built-in architecture stands in for the default model, on its queues.
    name = spec.name if spec else current.model or DEFAULT_MODEL
    queue, async_queue = queues_of(name, default if spec else name, value("CELERY_QUEUE"))
    batching = (spec.batching if spec else BatchingConfig()).resolved(
        current.batch_mode, current.batch_size, current.batch_timeout, current.batch_policy)
    return ServedModel(spec, name, batching, queue, async_queue)


@functools.cache
def classifier() -> ImageClassifier:
    """The process's classifier: built once, its model loaded by its first use (``setup``)."""
    from workers.accel import AccelConfig
    from workers.app import app
    from workers.handler import ImageClassifier
    from workers.synthetic import SimulatedCost

    current, model = settings(), served()
    # Uploads stored beside the queue, read with the broker's socket timeout.
    images = ImageStore.for_broker(str(app.conf.broker_url), float(app.conf.broker_connection_timeout))
    # Cores divided among concurrent forward passes: several narrow passes beat one wide one.
    threads = current.torch_threads or max(1, (os.cpu_count() or 1) // current.concurrency)
    return ImageClassifier(
        model.name, current.model_weights, current.device, current.max_image_pixels, jit=current.model_jit,
        threads=threads, max_decoded_bytes=int(current.max_decoded_mb * 2**20),
        accel=AccelConfig(current.precision, current.gpu_decode, bool(model.batching.enabled)),
        simulated=SimulatedCost(current.simulated_batch_ms, current.simulated_item_ms),
        images=images, spec=model.spec)
