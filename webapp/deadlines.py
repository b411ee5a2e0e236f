"""A request's deadline, fixed when it arrives.

A synchronous ``/predict`` waits at most ``RESULT_TIMEOUT``, or less when the
client asks (``?timeout=`` seconds, else a ``Request-Timeout`` or
``X-Request-Timeout`` header); an ``?async=true`` one may wait in the queue
at most ``ASYNC_RESULT_TTL``. The task's ``expires`` is that same absolute
instant, so a worker never computes a request nobody can still receive.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from werkzeug.wrappers import Request

from .exceptions import InvalidParameter

__all__ = ["MIN_TIMEOUT", "TIMEOUT_HEADERS", "Deadline", "requested_timeout"]

#: Headers a client may state its own deadline in, in seconds (first found wins).
TIMEOUT_HEADERS = ("Request-Timeout", "X-Request-Timeout")
#: Shortest deadline a client may ask for, seconds: below it no request can
#: be answered, so it is a client error (400), not a timeout (504).
MIN_TIMEOUT = 0.1


def requested_timeout(request: Request) -> float | None:
    """The client's timeout in seconds, or None; InvalidParameter (400) when malformed."""
    raw = request.args.get("timeout")
    source = "timeout"
    if raw is None:
        for header in TIMEOUT_HEADERS:
            if header in request.headers:
                raw, source = request.headers[header], header
                break
    if raw is None:
        return None
    text = raw.strip()
    try:
        # Short text only: float() of a huge string costs time.
        seconds = float(text) if len(text) <= 32 else math.nan
    except ValueError:
        seconds = math.nan
    if not MIN_TIMEOUT <= seconds < math.inf:
        raise InvalidParameter(
            f"{source} must be a number of seconds from {MIN_TIMEOUT:g}, got {raw[:20]!r}")
    return seconds


@dataclass(frozen=True)
class Deadline:
    """An absolute instant, on the wall clock (for ``expires``) and the monotonic one."""

    #: Epoch seconds.
    at: float
    #: ``time.monotonic()`` at the same instant.
    at_monotonic: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """The deadline ``seconds`` from now."""
        return cls(time.time() + seconds, time.monotonic() + seconds)

    @classmethod
    def for_request(cls, request: Request, longest: float) -> Deadline:
        """The client's timeout, capped at ``longest`` seconds (never longer)."""
        asked = requested_timeout(request)
        return cls.after(longest if asked is None else min(asked, longest))

    def remaining(self) -> float:
        """Seconds left (<= 0 once passed)."""
        return self.at_monotonic - time.monotonic()

    def expires(self) -> datetime:
        """The deadline as Celery's absolute ``expires`` (an aware UTC datetime)."""
        return datetime.fromtimestamp(self.at, tz=UTC)
