"""Admission and task records against a real Redis (no worker: nothing consumes the queue), and RabbitMQ."""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
import redis
from flask import Flask

from tests.support.brokers import client_for
from tests.support.images import make_image
from tests.support.web import web_apps
from webapp.admission import AmqpQueueLengths, LatencyPredictor
from webapp.dispatch import ACCEPTED_KEY_PREFIX as KEY_PREFIX

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def make_web(clean_redis: redis.Redis, redis_url: str) -> Iterator[Callable[..., Flask]]:
    def config_of(config: dict[str, Any]) -> dict[str, Any]:
        queue = f"webapp-adm-{uuid.uuid4().hex[:8]}"
        return {"TESTING": True, "MAX_QUEUE_LENGTH": 3, "MAX_SYNC_QUEUE_LENGTH": 1, "ASYNC_RESULT_TTL": 300.0,
                "RESULT_EXPIRES": 3600, **config,
                "CELERY": {"broker_url": redis_url, "result_backend": redis_url, "task_default_queue": queue,
                           "control_exchange": queue}}

    yield from web_apps(config_of)


@pytest.fixture
def web(make_web: Callable[..., Flask]) -> Flask:
    return make_web()


def predict(app: Flask, query: str = "", **headers: str) -> Any:
    return app.test_client().post(f"/predict{query}", data=make_image(), content_type="image/png",
                                  headers=headers)


def test_async_task_is_recorded_pending_and_unknown_ids_are_404(web: Flask, clean_redis: redis.Redis) -> None:
    response = predict(web, "?async=true")
    assert response.status_code == 202, response.json
    task_id = str(response.get_json()["task_id"])
    ttl = clean_redis.ttl(KEY_PREFIX + task_id)
    assert 3600 + 290 <= ttl <= 3600 + 300  # the task's deadline plus RESULT_EXPIRES
    client = web.test_client()
    assert client.get(f"/tasks/{task_id}").json == {"task_id": task_id, "status": "PENDING"}
    unknown = client.get(f"/tasks/{uuid.uuid4()}")
    assert unknown.status_code == 404 and unknown.get_json()["error"]["code"] == "not_found"
    clean_redis.delete(KEY_PREFIX + task_id)  # as when its record expires
    assert client.get(f"/tasks/{task_id}").status_code == 404


def test_each_queue_refuses_at_its_own_limit_before_enqueuing(web: Flask, clean_redis: redis.Redis) -> None:
    queues = web.extensions["dispatcher"].models.default_model.queues
    sync_queue, async_queue = (queues[kind].name for kind in ("sync", "async"))
    assert async_queue == f"{sync_queue}.async"
    for _ in range(3):
        assert predict(web, "?async=true").status_code == 202
    assert clean_redis.llen(async_queue) == 3
    deadline = time.monotonic() + 10
    # The async length is cached for 100 ms: poll until the web app has read it.
    while (response := predict(web, "?async=true")).status_code == 202 and time.monotonic() < deadline:
        pass
    assert response.status_code == 503 and response.json["error"]["code"] == "overloaded"
    assert int(response.headers["Retry-After"]) > 0
    full = clean_redis.llen(async_queue)
    # A full async queue does not hold up a synchronous request: it is sent to
    # its own queue (and, with no worker, times out).
    assert predict(web, "?timeout=0.3").status_code == 504
    assert clean_redis.llen(sync_queue) == 1
    # That queue is now at its own limit (1): the next one is refused at once.
    sync = predict(web, "?timeout=0.3")
    assert sync.status_code == 503 and "Retry-After" in sync.headers
    assert (clean_redis.llen(sync_queue), clean_redis.llen(async_queue)) == (1, full)
    text = web.test_client().get("/metrics").get_data(as_text=True)
    model = web.extensions["dispatcher"].models.default
    assert f'webapp_queue_length{{model="{model}",queue="{async_queue}"}} {float(full)}' in text
    assert f'webapp_queue_length{{model="{model}",queue="{sync_queue}"}} 1.0' in text


def test_sync_request_past_its_deadline_is_504_and_revoked(web: Flask, clean_redis: redis.Redis) -> None:
    started = time.monotonic()
    response = predict(web, "?timeout=0.5")
    assert response.status_code == 504 and response.json["error"]["code"] == "timeout"
    assert time.monotonic() - started < 10
    [message] = clean_redis.lrange(web.extensions["celery"].conf.task_default_queue, 0, -1)
    assert b"expires" in message  # the task carries its deadline
    text = web.test_client().get("/metrics").get_data(as_text=True)
    model = web.extensions["dispatcher"].models.default
    assert f'webapp_revoked_tasks_total{{model="{model}"}} 1.0' in text


def test_a_sync_request_predicted_to_miss_the_objective_is_refused_before_it_is_queued(
        make_web: Callable[..., Flask], clean_redis: redis.Redis) -> None:
    web = make_web(MAX_SYNC_QUEUE_LENGTH=0, MAX_LATENCY_MS=250)
    dispatcher, now = web.extensions["dispatcher"], [0.0]
    model = dispatcher.models.default_model
    predictor = dispatcher.latency[model.name] = LatencyPredictor(clock=lambda: now[0])
    clean_redis.rpush(model.queues["sync"].name, b"backlog")  # the workers are behind
    deadline = time.monotonic() + 10
    while model.queues["sync"].length.get() != 1 and time.monotonic() < deadline:
        pass  # the length is cached for 10 ms: until the web app has read it
    predictor.backlog(1)
    for _ in range(10):  # 10 completions per second
        with predictor.waiting_one():
            now[0] += 0.1
    with ExitStack() as held:
        for _ in range(3):  # one more would wait 0.4 s
            held.enter_context(predictor.waiting_one())
        response = predict(web, "?timeout=5")
        assert response.status_code == 503 and response.json["error"]["code"] == "overloaded"
        assert "predicted latency is 400 ms" in response.json["error"]["message"]
        assert int(response.headers["Retry-After"]) >= 1
        assert clean_redis.llen(model.queues["sync"].name) == 1  # nothing was queued
    text = web.test_client().get("/metrics").get_data(as_text=True)
    assert f'webapp_rejected_requests_total{{model="{model.name}",reason="latency"}} 1.0' in text
    assert predict(web, "?timeout=0.3").status_code == 504  # none waiting now: admitted (no worker)


def test_keys_tie_tasks_to_their_creator(make_web: Callable[..., Flask], clean_redis: redis.Redis) -> None:
    web = make_web(API_KEYS=("alpha", "beta"))
    response = predict(web, "?async=true", Authorization="Bearer alpha")
    assert response.status_code == 202
    polled = web.test_client().get(response.json["status_url"], headers={"Authorization": "Bearer alpha"})
    assert polled.status_code == 200
    stored = clean_redis.get(KEY_PREFIX + response.json["task_id"])
    assert stored is not None and b"alpha" not in stored and len(stored) == 64  # a SHA-256, hex


def test_rabbitmq_queue_lengths_are_read_and_a_failed_read_recovers(amqp_url: str, redis_url: str) -> None:
    queue = f"adm-amqp-{uuid.uuid4().hex[:8]}"
    app = client_for(amqp_url, redis_url, queue)
    for _ in range(3):
        app.send_task("nobody.consumes.this", queue=queue)  # confirmed by the broker when it returns
    lengths = AmqpQueueLengths(amqp_url, timeout=2.0)
    assert lengths.llen(queue) == 3
    with pytest.raises(Exception, match="NOT_FOUND"):
        lengths.llen("no-such-queue")  # the broker closes the channel
    assert lengths.llen(queue) == 3  # a fresh connection
