"""The worker's tasks (the model's hooks are ``workers.handler``): one worker serves both modes,
``CLASSIFY_TASK`` one forward pass per request, ``CLASSIFY_BATCH_TASK`` one per group buffered
by the batching consumer. The web app picks the name (``common.contract.task_name``).
"""
from __future__ import annotations

from batching import batch_task, single_task
from common.contract import (
    CLASSIFY_BATCH_TASK,
    CLASSIFY_TASK,
    PING_TASK,
    InvalidImageError,
    InvalidMessageError,
    MissingImageError,
)
from workers import runtime
from workers.app import app

__all__ = ["classify", "classify_batch", "ping"]

#: A request's own error: logged without a traceback, reported as 400 (or 504, an image
#: gone with its deadline) by the web app.
_CLIENT_ERRORS = (InvalidImageError, InvalidMessageError, MissingImageError)

_settings = runtime.settings()
_batching = runtime.served().batching


@app.task(name=PING_TASK)
def ping() -> str:
    """Round trip through the queue (tests and health checks wait on it)."""
    return "pong"


classify = single_task(app, runtime.classifier(), name=CLASSIFY_TASK, throws=_CLIENT_ERRORS)
classify_batch = batch_task(
    app, runtime.classifier(), name=CLASSIFY_BATCH_TASK, throws=_CLIENT_ERRORS,
    flush_every=_batching.batch_size, flush_interval=_batching.timeout,
    batch_policy=_batching.policy,
    # One batch per pool thread: each runs its forward pass on its own core(s).
    max_inflight=_settings.concurrency,
    # An individual-mode worker keeps its one-message-per-slot window: batch
    # messages reach it only when the web app and the worker disagree on the mode.
    raise_prefetch=bool(_batching.enabled))
