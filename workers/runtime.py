"""The worker process's settings and its classifier, each made once."""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from common.config import WorkerSettings, load, value
from common.image_store import ImageStore
from common.repository import BatchingConfig, ModelSpec, RepositoryError, queues_of, scan

if TYPE_CHECKING:
    from workers.handler import ImageClassifier

__all__ = ["ServedModel", "classifier", "configure", "default_torch_threads", "resolve", "served", "settings"]

_lock = threading.Lock()
_settings: WorkerSettings | None = None
_classifier: ImageClassifier | None = None


@dataclass(frozen=True)
class ServedModel:
    """What this worker serves: its repository entry (None: a built-in architecture, as the
    default model), its batching with the environment's defaults filled in, its queues."""

    spec: ModelSpec | None
    #: The repository name, or ``MODEL`` for a built-in architecture.
    name: str
    batching: BatchingConfig
    queue: str
    async_queue: str


_served: ServedModel | None = None


def configure(**overrides: Any) -> WorkerSettings:
    """Read this process's settings now, ``overrides`` winning (``python -m workers --batch``)."""
    global _settings, _served
    with _lock:
        _settings = load(WorkerSettings, **overrides)
        _served = None
        return _settings


def settings() -> WorkerSettings:
    """This process's settings, read from the environment on first use."""
    global _settings
    with _lock:
        if _settings is None:
            _settings = load(WorkerSettings)
        return _settings


def served() -> ServedModel:
    """The model of ``MODEL`` in ``MODEL_REPOSITORY``, read once; a built-in architecture when
    ``MODEL_WEIGHTS`` is set or the repository has no such model. ``ModelLoadError`` when the
    folder cannot serve (its reason names the file and the fix)."""
    global _served
    current = settings()
    with _lock:
        if _served is None:
            _served = resolve(current)
        return _served


def resolve(current: WorkerSettings) -> ServedModel:
    """What a worker with these settings serves (:func:`served` caches it for the process): ``MODEL``,
    else the repository's default model, else the built-in default architecture."""
    from workers.exceptions import ModelLoadError
    from workers.model import DEFAULT_MODEL

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
    base = spec.batching if spec else BatchingConfig()
    batching = base.resolved(current.batch_mode, current.batch_size, current.batch_timeout,
                             current.batch_policy)
    return ServedModel(spec, name, batching, queue, async_queue)


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
    served_model = served()
    with _lock:
        if _classifier is None:
            from workers.accel import AccelConfig
            from workers.handler import ImageClassifier
            from workers.synthetic import SimulatedCost

            _classifier = ImageClassifier(
                served_model.name, current.model_weights, current.device, current.max_image_pixels,
                jit=current.model_jit, threads=current.torch_threads or default_torch_threads(current),
                max_decoded_bytes=int(current.max_decoded_mb * 2**20),
                accel=AccelConfig.from_settings(current),
                simulated=SimulatedCost(current.simulated_batch_ms, current.simulated_item_ms),
                images=_image_store(), spec=served_model.spec)
        return _classifier
