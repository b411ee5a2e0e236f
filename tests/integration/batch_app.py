"""Batching tasks for the integration tests (no model); the worker is ``celery -A`` this.

``t.echo`` is steered by each request's argument: ``"poison"`` makes ``predict`` raise for its
group, ``"bad-decode"`` makes ``decode_request`` raise, ``"gate"`` pushes to the Redis list
``started`` and blocks until the test pushes to ``gate``, ``"hang"`` blocks for good. ``add``,
``cumadd`` and ``failing`` are celery-batches' own examples, only the import changed. Signals go
to the Redis list ``signals`` as ``signal task-name``.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis

import celery
from celery import Celery, shared_task, signals

from batching import BatchAPI, Batches, SimpleRequest, batch_task
from workers import watchdog

app = Celery("batch_app")
app.config_from_object("celeryconfig")
_redis = redis.Redis.from_url(app.conf.broker_url, socket_timeout=None)  # the gate waits up to 60 s


class Echo(BatchAPI):
    def decode_request(self, request: SimpleRequest) -> Any:
        if request.args[0] == "bad-decode":
            raise ValueError("cannot decode this one")
        return f"decoded:{request.args[0]}"

    def predict(self, batch: list[str]) -> list[str]:
        if "decoded:poison" in batch:
            raise RuntimeError("poison in batch")
        if "decoded:hang" in batch:
            _redis.rpush("started", len(batch))
            threading.Event().wait()  # a forward pass that never returns
        if "decoded:gate" in batch:
            _redis.rpush("started", len(batch))
            _redis.blpop(["gate"], timeout=60)
        return batch

    def encode_response(self, output: str, request: SimpleRequest) -> dict[str, Any]:
        assert request.batch is not None
        return {"value": request.args[0], "decoded": output, "batch_size": request.batch.size,
                "ran_at": time.time(), "pid": os.getpid()}


if os.environ.get("FORWARD_TIMEOUT"):
    watchdog.install(float(os.environ["FORWARD_TIMEOUT"]))


@app.task(name="t.ping")
def ping() -> str:
    return "pong"


echo = batch_task(app, Echo(), name="t.echo", flush_every=int(os.environ.get("FLUSH_EVERY", "4")),
                  flush_interval=float(os.environ.get("FLUSH_INTERVAL", "30")),
                  batch_policy=os.environ.get("BATCH_POLICY", "timeout"))


# -- celery-batches' examples

@shared_task(base=Batches, flush_every=2, flush_interval=0.1)
def add(requests: list[SimpleRequest]) -> int:
    """Add the first argument of each task; mark the result of each task as the sum."""
    from celery import current_app

    result = 0
    for request in requests:
        result += sum(request.args) + sum(request.kwargs.values())
    for request in requests:
        current_app.backend.mark_as_done(request.id, result, request=request)
    return result


@shared_task(base=Batches, flush_every=2, flush_interval=0.1)
def cumadd(requests: list[SimpleRequest]) -> None:
    """The cumulative sum of the first argument of each task, at each point."""
    from celery import current_app

    result = 0
    for request in requests:
        result += request.args[0]
        current_app.backend.mark_as_done(request.id, result, request=request)


@shared_task(base=Batches, flush_every=2, flush_interval=0.1)
def failing(requests: list[SimpleRequest]) -> None:
    """Always raise."""
    raise RuntimeError("fail")


# -- what run() sees: the current task, and whether its messages are acknowledged

def _observe(requests: list[SimpleRequest], wait_for_acks: bool) -> None:
    """Record the current task and the unacked count (an early ack may land just after run starts)."""
    deadline = time.monotonic() + 10
    while wait_for_acks and _redis.hlen("unacked") and time.monotonic() < deadline:
        time.sleep(0.01)  # polling Redis: there is nothing to block on
    _redis.rpush("observed", repr({
        "current_task": celery.current_task.name, "app_current_task": app.current_task.name,
        "unacked": _redis.hlen("unacked"), "requests": len(requests)}))
    for request in requests:
        app.backend.mark_as_done(request.id, "seen", request=request)


@app.task(base=Batches, name="t.early_ack", acks_late=False, flush_every=2, flush_interval=0.1)
def early_ack(requests: list[SimpleRequest]) -> None:
    _observe(requests, wait_for_acks=True)


@app.task(base=Batches, name="t.late_ack", acks_late=True, flush_every=2, flush_interval=0.1)
def late_ack(requests: list[SimpleRequest]) -> None:
    _observe(requests, wait_for_acks=False)


def _record(signal_name: str) -> Any:
    def receiver(sender: Any = None, **kwargs: Any) -> None:
        name = kwargs["request"].name if signal_name == "task_received" else getattr(sender, "name", sender)
        if name not in {"t.ping", "celery.ping"}:
            _redis.rpush("signals", f"{signal_name} {name}")
    return receiver


for _name in ("task_received", "task_prerun", "task_postrun", "task_success", "task_failure"):
    getattr(signals, _name).connect(_record(_name), weak=False)
