"""``Batches``: the Task base class of batching tasks (celery-batches' name and options)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.app.task import Task
from celery.exceptions import Ignore
from celery.result import EagerResult
from celery.worker.strategy import default as default_strategy

from batching.api import BatchAPI, SimpleRequest
from batching.consumer import BatchConsumer, guarded
from batching.scheduler import POLICIES
from batching.trace import release, settle

__all__ = ["Batches", "Unbatched", "batch_task", "single_task"]


class Batches(Task):
    """Calls buffered by the worker and run as batches: set :attr:`api`, or write ``run(requests)``."""

    abstract = True
    #: Calls take the single task's arguments; ``run`` takes the list.
    typing = False

    # The options of docs/batching.md's table.
    flush_every: int = 10
    flush_interval: float = 30.0
    batch_policy: str = "timeout"
    max_inflight: int = 1
    decode_concurrency: int = 2
    raise_prefetch: bool = True
    #: The model's hooks; None for a celery-batches style ``run(requests)``.
    api: BatchAPI | None = None

    @classmethod
    def on_bound(cls, app: Celery) -> None:
        """Check the options when the task is registered, not at the first message."""
        _check(cls, "flush_every", _is_int(cls.flush_every, 1), "a positive integer")
        _check(cls, "max_inflight", _is_int(cls.max_inflight, 1), "a positive integer")
        _check(cls, "decode_concurrency", _is_int(cls.decode_concurrency, 0), "0 or more")
        _check(cls, "flush_interval", isinstance(cls.flush_interval, (int, float)) and cls.flush_interval > 0,
               "positive seconds")
        _check(cls, "batch_policy", cls.batch_policy in POLICIES, f"one of {', '.join(POLICIES)}")
        _check(cls, "api", cls.api is None or isinstance(cls.api, BatchAPI), "a batching.BatchAPI")
        _check(cls, "raise_prefetch", isinstance(cls.raise_prefetch, bool), "True or False")

    def run(self, requests: list[SimpleRequest]) -> Any:
        """The API's forward pass over decoded requests; override it for a celery-batches task."""
        if self.api is None:
            raise NotImplementedError("must implement run(requests) or set api")
        return self.api.handle(requests)

    def Strategy(self, task: Batches, app: Celery, consumer: Any) -> Callable[..., None]:
        """The consumer's message handler for this task: it buffers instead of executing."""
        return guarded(task, consumer, BatchConsumer.attach(task, app, consumer).on_message)

    def apply(self, args: tuple[Any, ...] | None = None, kwargs: dict[str, Any] | None = None,
              *_args: Any, **options: Any) -> Any:
        """Run here and now as a batch of one (a ``run(requests)`` task returns what ``run`` returned)."""
        request = SimpleRequest.eager(self.name, args, kwargs, options)
        if self.api is not None:
            self.api.decode(request)
        result = super().apply(([request],), {}, *_args, **options)
        if self.api is None or not result.successful():
            return result
        return EagerResult(result.id, result.result[0], result.state, name=self.name)


class Unbatched(Task):
    """A task whose malformed messages fail alone, and whose redelivered finished ones are not rerun."""

    abstract = True
    #: The hooks ``single_task`` runs; their ``release`` follows each stored result.
    api: BatchAPI | None = None

    def after_return(self, status: str, retval: Any, task_id: str, args: Any, kwargs: Any,
                     einfo: Any) -> None:
        """Once the result is stored: the API's ``release`` for this request."""
        if self.api is not None:
            release(self, [SimpleRequest.from_context(self.name, self.request)])

    def Strategy(self, task: Task, app: Celery, consumer: Any, **kwargs: Any) -> Callable[..., None]:
        """Celery's default strategy, guarded."""
        return guarded(task, consumer, default_strategy(task, app, consumer, **kwargs))


def _is_int(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _check(cls: type[Batches], option: str, ok: bool, expected: str) -> None:
    if not ok:
        raise ValueError(f"{cls.name}: {option} must be {expected}, got {getattr(cls, option)!r}")


def batch_task(app: Celery, api: BatchAPI, *, name: str, **options: Any) -> Batches:
    """Register ``api`` as the batching task ``name``; ``options`` are task options."""
    if not isinstance(api, BatchAPI):
        raise TypeError(f"api must be a batching.BatchAPI, got {type(api).__name__}")
    task_class = type(type(api).__name__ + "Task", (Batches,),
                      {"name": name, "api": api, "__module__": type(api).__module__, **options})
    task: Batches = app.register_task(task_class())
    return task


def single_task(app: Celery, api: BatchAPI, *, name: str, **options: Any) -> Task:
    """Register ``api`` as an ordinary task ``name``: each request a batch of one, skipped as in a batch."""
    if not isinstance(api, BatchAPI):
        raise TypeError(f"api must be a batching.BatchAPI, got {type(api).__name__}")

    def run(task: Task, *args: Any, **kwargs: Any) -> Any:
        request = SimpleRequest.from_context(task.name, task.request)
        if settle(task, request) is not None:  # expired, or already done: acknowledged, not run
            release(task, [request])
            raise Ignore()
        return api(request)

    run.__name__ = run.__qualname__ = type(api).__name__
    task: Task = app.task(base=Unbatched, name=name, bind=True, shared=False, api=api, **options)(run)
    return task
