"""The worker's tasks: one worker serves both modes, the web app picks the task name."""
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

#: A request's own error: logged without a traceback.
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
    # Individual mode keeps one message per slot: batch ones come only if web app and worker disagree.
    raise_prefetch=bool(_batching.enabled))
