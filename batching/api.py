"""What a user of the library writes and sees: the hooks, the request records, the signals."""
from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery.utils.dispatch import Signal
from celery.utils.nodenames import gethostname
from celery.worker.request import Request
from kombu.utils.uuid import uuid

__all__ = ["BatchAPI", "BatchInfo", "SimpleRequest", "batch_dispatched", "batch_finished", "batch_predicted"]

# Their arguments: docs/batching.md, Signals. batch_predicted's sender is the BatchAPI.
batch_dispatched = Signal(name="batch_dispatched")
batch_finished = Signal(name="batch_finished")
batch_predicted = Signal(name="batch_predicted")


@dataclass(frozen=True)
class BatchInfo:
    """The forward pass a request was served by (``request.batch`` in ``encode_response``)."""

    id: str  # shared by every request of one predict call
    size: int
    started_at: float  # epoch seconds when batch began
    seconds: float  # in batch + predict + unbatch


class SimpleRequest:
    """One request of a batch, with celery-batches' fields (picklable for prefork)."""

    decoded: Any = None  # decode_request's value (API tasks only)
    batch: BatchInfo | None = None  # set just before encode_response
    # Read by the result backend when storing (celery.backends.base).
    chord = None
    group = None
    parent_id = None
    errbacks = None

    def __init__(self, id: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 delivery_info: dict[str, Any], hostname: str, ignore_result: bool,
                 reply_to: str | None, correlation_id: str | None, expires: float | None = None) -> None:
        self.id, self.name, self.args, self.kwargs = id, name, args, kwargs
        self.delivery_info, self.hostname, self.ignore_result = delivery_info, hostname, ignore_result
        self.reply_to, self.correlation_id = reply_to, correlation_id
        #: Epoch seconds after which the request must not run (its message's ``expires``).
        self.expires = expires

    def expired(self) -> bool:
        return self.expires is not None and time.time() > self.expires

    @classmethod
    def from_request(cls, request: Request) -> SimpleRequest:
        """From a worker request; TypeError if its body is not ``[args, kwargs, embed]``."""
        args, kwargs = request.args, request.kwargs
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise TypeError(f"task body must be [args, kwargs, embed], got args of type "
                            f"{type(args).__name__} and kwargs of type {type(kwargs).__name__}")
        return cls(request.id, request.name, tuple(args), dict(kwargs), request.delivery_info or {},
                   request.hostname, bool(getattr(request, "ignore_result", False)),
                   request.reply_to, request.correlation_id, _epoch(request.expires))

    @classmethod
    def from_context(cls, name: str, context: Any) -> SimpleRequest:
        """The request an ordinary task is running (``task.request``)."""
        return cls(context.id, name, tuple(context.args or ()), dict(context.kwargs or {}),
                   context.delivery_info or {}, context.hostname, bool(context.ignore_result),
                   context.reply_to, context.correlation_id, _epoch(getattr(context, "expires", None)))

    @classmethod
    def eager(cls, name: str, args: tuple[Any, ...] | None, kwargs: dict[str, Any] | None,
              options: dict[str, Any]) -> SimpleRequest:
        """A request for ``task.apply()``, as celery-batches builds it."""
        delivery_info = {"is_eager": True, **{key: options.get(key) for key in
                                              ("exchange", "routing_key", "priority")}}
        return cls(options.get("task_id") or uuid(), name, tuple(args or ()), dict(kwargs or {}),
                   delivery_info, gethostname(), options.get("ignore_result", False), None, None)


def _epoch(expires: Any) -> float | None:
    """A message's ``expires`` (a datetime or ISO 8601 text) as epoch seconds; naive times are UTC."""
    if expires is None or expires == "":
        return None
    if isinstance(expires, (int, float)) and not isinstance(expires, bool):
        return float(expires)
    moment = datetime.fromisoformat(expires) if isinstance(expires, str) else expires
    if not isinstance(moment, datetime):
        raise TypeError(f"expires must be a datetime or ISO 8601 text, got {type(expires).__name__}")
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


class BatchAPI:
    """Override ``predict`` (and usually ``setup``, ``decode_request``, ``encode_response``):
    ``decode_request`` per request as it arrives, ``batch`` -> ``predict`` -> ``unbatch`` per batch,
    ``encode_response`` per request; then its result is stored and ``release`` called."""

    def __init__(self) -> None:
        self._setup_lock = threading.Lock()
        self._is_set_up = False

    # -- hooks, in the order they run

    def setup(self) -> None:
        """Load the model; runs once per process, before the first decode or predict."""

    def decode_request(self, request: SimpleRequest) -> Any:
        """One request's input for ``batch``; raising fails that request alone."""
        return request.args[0] if len(request.args) == 1 else request.args

    def batch(self, inputs: list[Any]) -> Any:
        return inputs

    def predict(self, batch: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement predict(batch)")

    def unbatch(self, output: Any) -> Sequence[Any]:
        """One value per input."""
        return list(output)

    def encode_response(self, output: Any, request: SimpleRequest) -> Any:
        """The result stored for ``request``."""
        return output

    def release(self, requests: Sequence[SimpleRequest]) -> None:
        """Called once these requests' results are stored or need none: free what ``decode_request`` kept."""

    # -- driving the hooks

    def ensure_setup(self) -> None:
        if self._is_set_up:
            return
        with self._setup_lock:
            if not self._is_set_up:
                self.setup()
                self._is_set_up = True

    def decode(self, request: SimpleRequest) -> SimpleRequest:
        self.ensure_setup()
        request.decoded = self.decode_request(request)
        return request

    def handle(self, requests: Sequence[SimpleRequest]) -> list[Any]:
        """One forward pass over decoded requests; one encoded result per request, in order."""
        if not requests:
            raise ValueError("handle() needs at least one request")
        self.ensure_setup()
        started_at, begin = time.time(), time.perf_counter()
        outputs = list(self.unbatch(self.predict(self.batch([r.decoded for r in requests]))))
        if len(outputs) != len(requests):
            raise RuntimeError(f"{type(self).__name__}.unbatch returned {len(outputs)} outputs "
                               f"for {len(requests)} requests")
        info = BatchInfo(uuid(), len(requests), started_at, time.perf_counter() - begin)
        batch_predicted.send(sender=self, size=info.size, seconds=info.seconds)
        results = []
        for request, output in zip(requests, outputs):
            request.batch = info
            results.append(self.encode_response(output, request))
        return results

    def __call__(self, request: SimpleRequest) -> Any:
        """Serve one request as a batch of one (``single_task``)."""
        return self.handle([self.decode(request)])[0]
