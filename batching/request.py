"""What ``run(requests)`` and the API hooks see of each request: picklable records."""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery.utils.nodenames import gethostname
from celery.worker.request import Request
from kombu.utils.uuid import uuid

__all__ = ["BatchInfo", "SimpleRequest"]


@dataclass(frozen=True)
class BatchInfo:
    """The forward pass a request was served by (``request.batch`` in ``encode_response``)."""

    #: Shared by every request of one ``predict`` call.
    id: str
    size: int
    #: Epoch seconds when ``batch`` began.
    started_at: float
    #: Seconds spent in ``batch`` + ``predict`` + ``unbatch``.
    seconds: float


class SimpleRequest:
    """One request of a batch, with celery-batches' fields (picklable for prefork)."""

    #: ``decode_request``'s value, once decoded (API tasks only).
    decoded: Any = None
    #: Set just before ``encode_response``.
    batch: BatchInfo | None = None
    # Read by the result backend when storing (celery.backends.base).
    chord = None
    group = None
    parent_id = None
    errbacks = None

    def __init__(
        self,
        id: str,
        name: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        delivery_info: dict[str, Any],
        hostname: str,
        ignore_result: bool,
        reply_to: str | None,
        correlation_id: str | None,
        expires: float | None = None,
    ) -> None:
        self.id = id
        self.name = name
        self.args = args
        self.kwargs = kwargs
        self.delivery_info = delivery_info
        self.hostname = hostname
        self.ignore_result = ignore_result
        self.reply_to = reply_to
        self.correlation_id = correlation_id
        #: Epoch seconds after which the request must not run (its message's ``expires``).
        self.expires = expires

    def expired(self, now: float | None = None) -> bool:
        """Whether the request's deadline has passed (``now``: epoch seconds, default the clock)."""
        return self.expires is not None and (time.time() if now is None else now) > self.expires

    @classmethod
    def from_request(cls, request: Request) -> SimpleRequest:
        """Copy what ``run`` needs from a worker request; TypeError/ValueError if its body is malformed."""
        args, kwargs, _embed = request._payload
        if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
            raise TypeError(f"task body must be [args, kwargs, embed], got args of type "
                            f"{type(args).__name__} and kwargs of type {type(kwargs).__name__}")
        return cls(request.id, request.name, tuple(args), dict(kwargs), request.delivery_info or {},
                   request.hostname, bool(getattr(request, "ignore_result", False)),
                   request.reply_to, request.correlation_id, _epoch(request.expires))

    @classmethod
    def from_context(cls, name: str, context: Any) -> SimpleRequest:
        """The request an ordinary task is running (``task.request``), for :func:`batching.single_task`."""
        return cls(context.id, name, tuple(context.args or ()), dict(context.kwargs or {}),
                   context.delivery_info or {}, context.hostname, bool(context.ignore_result),
                   context.reply_to, context.correlation_id, _epoch(getattr(context, "expires", None)))

    @classmethod
    def eager(cls, name: str, args: tuple[Any, ...] | None, kwargs: dict[str, Any] | None,
              options: dict[str, Any]) -> SimpleRequest:
        """A request for ``task.apply()``: run here and now, as celery-batches builds it."""
        return cls(
            id=options.get("task_id") or uuid(), name=name, args=tuple(args or ()),
            kwargs=dict(kwargs or {}),
            delivery_info={"is_eager": True, "exchange": options.get("exchange"),
                           "routing_key": options.get("routing_key"), "priority": options.get("priority")},
            hostname=gethostname(), ignore_result=options.get("ignore_result", False),
            reply_to=None, correlation_id=None)


def _epoch(expires: Any) -> float | None:
    """A message's ``expires`` (a datetime, or ISO 8601 text in a task's context) as epoch seconds.

    Naive times are UTC, as Celery sends them with ``enable_utc`` (its default).
    """
    if expires is None or expires == "":
        return None
    if isinstance(expires, (int, float)) and not isinstance(expires, bool):
        return float(expires)
    moment = datetime.fromisoformat(expires) if isinstance(expires, str) else expires
    if not isinstance(moment, datetime):
        raise TypeError(f"expires must be a datetime or ISO 8601 text, got {type(expires).__name__}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
