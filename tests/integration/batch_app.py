"""A generic Batches task for the consumer's integration tests (no model, no images).

Behaviour is steered by each request's argument: ``"poison"`` makes ``run``
raise for any group that holds it, ``"bad-prepare"`` makes ``prepare`` raise,
and ``"gate"`` blocks ``run`` until the test pushes to the ``gate`` list, after
announcing the batch on ``started``.
"""
from __future__ import annotations

import os
import time
from typing import Any

import redis

from celery import Celery

from batching import Batches, SimpleRequest

app = Celery("batch_app")
app.config_from_object("celeryconfig")
_redis = redis.Redis.from_url(app.conf.broker_url)


class _Echo(Batches):
    def prepare(self, request: SimpleRequest) -> Any:
        if request.args[0] == "bad-prepare":
            raise ValueError("cannot prepare this one")
        return f"prepared:{request.args[0]}"


@app.task(name="t.ping")
def ping() -> str:
    return "pong"


@app.task(base=_Echo, bind=True, name="t.echo", flush_every=int(os.environ.get("FLUSH_EVERY", "4")),
          flush_interval=float(os.environ.get("FLUSH_INTERVAL", "30")),
          batch_policy=os.environ.get("BATCH_POLICY", "timeout"))
def echo(self: _Echo, requests: list[SimpleRequest]) -> list[dict[str, Any]]:
    values = [r.args[0] for r in requests]
    if "poison" in values:
        raise RuntimeError("poison in batch")
    if "gate" in values:
        _redis.rpush("started", len(values))
        _redis.blpop(["gate"], timeout=60)
    ran_at = time.time()
    return [{"value": r.args[0], "prepared": r.prepared, "batch_size": len(requests),
             "ran_at": ran_at, "pid": os.getpid()} for r in requests]


@app.task(base=Batches, name="t.legacy", flush_every=3, flush_interval=0.2)
def legacy(requests: list[SimpleRequest]) -> None:
    """celery-batches' documented style: store each result yourself."""
    for request in requests:
        app.backend.mark_as_done(request.id, request.args[0] * 2, request=request)
