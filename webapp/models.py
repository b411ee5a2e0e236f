"""The models this web app routes to, read at start, never loaded: a request names a key, never a path."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from common.repository import ModelSpec, RepositoryError, queues_of, scan

from .admission import BoundedQueue
from .errors import ApiError

__all__ = ["WebModel", "WebModels", "build"]


@dataclass(frozen=True)
class WebModel:
    """One routable model: its spec (None: the workers' built-in default), its queues, its mode."""

    name: str
    spec: ModelSpec | None
    queues: dict[str, BoundedQueue]  # "sync" and "async"
    batch: bool | None  # its [batching] enabled; None: USE_BATCH_PROCESSING
    broken: str | None = None  # why it cannot serve (a broken folder)

    def batch_mode(self, default: bool) -> bool:
        """Whether its tasks are the batch task (``default``: ``USE_BATCH_PROCESSING``)."""
        return default if self.batch is None else self.batch

    @property
    def queue(self) -> str:
        """Its synchronous queue: what its live workers consume."""
        return self.queues["sync"].name

    @property
    def num_labels(self) -> int:
        return 1000 if self.spec is None else self.spec.num_labels

    def describe(self, batch_default: bool, reason: str | None, workers: int | None) -> dict[str, object]:
        """``GET /models/<name>``'s body (``reason``: why it cannot serve; ``workers``: None unknown)."""
        body: dict[str, object] = {"name": self.name, "ready": reason is None}
        body.update(self.spec.describe() if self.spec else {"version": "1", "labels": self.num_labels})
        if reason is not None:
            body["reason"] = reason
        body["queue"] = self.queue
        if workers is not None:
            body["workers"] = workers
        batching = self.spec.batching if self.spec else None
        own = {} if batching is None else {  # the model.toml's own; the rest are the workers' environment's
            key: value for key, value in (("batch_size", batching.batch_size), ("timeout", batching.timeout),
                                          ("policy", batching.policy)) if value is not None}
        body["batching"] = {"enabled": self.batch_mode(batch_default), **own}
        return body


@dataclass(frozen=True)
class WebModels:
    """Every model by name, and the one ``/predict`` serves (None: several and no ``DEFAULT_MODEL``)."""

    by_name: dict[str, WebModel]
    default: str | None

    @property
    def default_model(self) -> WebModel | None:
        return None if self.default is None else self.by_name[self.default]

    def find(self, name: str | None) -> WebModel:
        """Model ``name`` (None: the default), servable or not; 404 ``model_not_found``."""
        key = self.default if name is None else name
        if key is None:
            raise ApiError("model_not_found", "several models are served and none is the default: POST "
                           f"/models/<name>/predict with one of {', '.join(sorted(self.by_name))}, "
                           "or set DEFAULT_MODEL")
        model = self.by_name.get(key)
        if model is None:
            raise ApiError("model_not_found", f"no model named {key[:64]!r}: GET /models lists them")
        return model


def build(root: str, asked: str | None, base_queue: str,
          bounded: Callable[[str, str], dict[str, BoundedQueue]]) -> WebModels:
    """Read repository ``root`` (``asked``: ``DEFAULT_MODEL``, a RepositoryError unless one of it)."""
    try:
        repository = scan(root)
    except RepositoryError:  # no repository: the workers serve their built-in MODEL on CELERY_QUEUE
        one = asked or "default"
        return WebModels({one: WebModel(one, None, bounded(*queues_of(one, one, base_queue)), None)}, one)
    default = repository.default_name(asked)

    def queues(name: str) -> dict[str, BoundedQueue]:
        return bounded(*queues_of(name, default, base_queue))

    models = {name: WebModel(name, spec, queues(name), spec.batching.enabled)
              for name, spec in repository.models.items()}
    for name, broken in repository.broken.items():
        models[name] = WebModel(name, None, queues(name), None, broken.reason)
    if default is not None and default not in models:
        raise RepositoryError(f"DEFAULT_MODEL={default} is not a model of {root}: use one of "
                              f"{', '.join(sorted(models)) or 'none (the folder is empty)'}")
    return WebModels(models, default)
