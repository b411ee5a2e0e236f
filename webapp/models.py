"""The models this web app routes to: read from ``MODEL_REPOSITORY`` at start, never loaded.

Each model has its own queue pair (``common.repository.queues_of``) and its own
admission bounds; a request names a model only as a key of this table, so no
path in a request ever reaches the file system. Without a repository folder the
app serves one model, the workers' built-in default, on ``CELERY_QUEUE``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask

from common.repository import ModelSpec, RepositoryError, queues_of, scan

from . import metrics
from .admission import BoundedQueue
from .exceptions import ModelNotFound, ModelUnavailable

__all__ = ["WebModel", "WebModels", "find", "init_app", "lookup"]


@dataclass(frozen=True)
class WebModel:
    """One routable model: its spec (None: the workers' built-in default), its queues, its mode."""

    name: str
    spec: ModelSpec | None
    #: ``sync`` and ``async`` bounded queues.
    queues: dict[str, BoundedQueue]
    #: Batch mode: its ``[batching] enabled``; None: ``USE_BATCH_PROCESSING``.
    batch: bool | None
    #: Why it cannot serve (a broken folder); None when it can.
    broken: str | None = None

    def batch_mode(self, default: bool) -> bool:
        """Whether its tasks are the batch task, ``default`` being ``USE_BATCH_PROCESSING``."""
        return default if self.batch is None else self.batch

    @property
    def num_labels(self) -> int:
        return 1000 if self.spec is None else self.spec.num_labels

    def describe(self, batch_default: bool, reason: str | None, workers: int | None) -> dict[str, object]:
        """``GET /models/<name>``'s body, ``batch_default`` being ``USE_BATCH_PROCESSING``, ``reason``
        why it cannot serve now (None: it can), ``workers`` its live workers (None: unknown)."""
        body: dict[str, object] = {"name": self.name, "ready": reason is None}
        if self.spec is not None:
            body.update(self.spec.describe())
        else:
            body.update({"version": "1", "labels": self.num_labels})
        if reason is not None:
            body["reason"] = reason
        body["queue"] = self.queues["sync"].name
        if workers is not None:
            body["workers"] = workers
        body["batching"] = {"enabled": self.batch_mode(batch_default), **_batching_fields(self.spec)}
        return body


def _batching_fields(spec: ModelSpec | None) -> dict[str, object]:
    """The model.toml's own batching values; the rest are the workers' environment's."""
    if spec is None:
        return {}
    batching = spec.batching
    return {key: item for key, item in (("batch_size", batching.batch_size), ("timeout", batching.timeout),
                                        ("policy", batching.policy)) if item is not None}


@dataclass(frozen=True)
class WebModels:
    """Every model by name, and the one ``/predict`` serves (None: several and no ``DEFAULT_MODEL``)."""

    by_name: dict[str, WebModel]
    default: str | None

    @property
    def default_model(self) -> WebModel | None:
        return None if self.default is None else self.by_name[self.default]


def build(config: dict[str, object], base_queue: str,
          bounded: Callable[[str, str], dict[str, BoundedQueue]]) -> WebModels:
    """Read the repository; ``bounded(sync, async)`` makes a model's bounded queues."""
    root = str(config["MODEL_REPOSITORY"])
    asked = config.get("DEFAULT_MODEL")
    try:
        repository = scan(root)
    except RepositoryError:
        # No repository: the workers serve their built-in MODEL on CELERY_QUEUE.
        name = str(asked or "default")
        return WebModels({name: WebModel(name, None, bounded(*queues_of(name, name, base_queue)), None)},
                         name)
    default = repository.default_name(str(asked) if asked else None)
    models: dict[str, WebModel] = {}
    for name, spec in repository.models.items():
        models[name] = WebModel(name, spec, bounded(*queues_of(name, default, base_queue)),
                                spec.batching.enabled)
    for name, broken in repository.broken.items():
        models[name] = WebModel(name, None, bounded(*queues_of(name, default, base_queue)), None,
                                broken.reason)
    if default is not None and default not in models:
        raise RepositoryError(f"DEFAULT_MODEL={default} is not a model of {root}: use one of "
                              f"{', '.join(sorted(models)) or 'none (the folder is empty)'}")
    return WebModels(models, default)


def find(app: Flask, name: str | None) -> WebModel:
    """Model ``name`` (None: the default), servable or not; ModelNotFound (404)."""
    models: WebModels = app.extensions["models"]
    key = models.default if name is None else name
    if key is None:
        raise ModelNotFound(f"several models are served and none is the default: POST /models/<name>/predict "
                            f"with one of {', '.join(sorted(models.by_name))}, or set DEFAULT_MODEL")
    model = models.by_name.get(key)
    if model is None:
        raise ModelNotFound(f"no model named {key[:64]!r}: GET /models lists them")
    metrics.for_model(model.name)
    return model


def lookup(app: Flask, name: str | None, retry_after: int, *, synchronous: bool) -> WebModel:
    """:func:`find`, and ModelUnavailable (503) for a model that cannot serve: a broken folder,
    or (for a client that waits) no live worker, so it is refused now rather than at its deadline."""
    model = find(app, name)
    reason = model.broken
    if reason is None and synchronous:
        answer = app.extensions["readiness"].latest()
        reason = None if answer is None else answer.why_not(model)
    if reason is not None:
        raise ModelUnavailable(f"model {model.name} cannot serve: {reason}", retry_after)
    return model


def init_app(app: Flask, bounded: Callable[[str, str], dict[str, BoundedQueue]]) -> None:
    """``app.extensions["models"]``: every model, with its bounded queues."""
    base_queue = str(app.extensions["celery"].conf.task_default_queue)
    app.extensions["models"] = build(app.config, base_queue, bounded)
