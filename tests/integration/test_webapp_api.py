"""The API end to end over a real Redis broker and result store: an embedded Celery worker (Celery's
``start_worker``) runs stand-in tasks under the real task names, so the web app's path is real from
the HTTP request to the broker, the result key, pub/sub and back."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import msgpack
import pytest
import redis
from flask import Flask
from PIL import Image

from celery import Celery, Task
from celery.contrib.testing.worker import start_worker
from kombu import Queue

from common.config import async_queue_of
from common.contract import (
    CLASSIFY_BATCH_TASK,
    CLASSIFY_TASK,
    ClassifyArgs,
    ClassifyResult,
    InvalidImageError,
    Prediction,
)
from common.image_store import GRACE_SECONDS, ImageStore, image_key
from tests.support.images import make_image
from tests.support.web import web_apps
from tests.unit.test_webapp_routes import CONTRACT_KEYS, json_of

pytestmark = pytest.mark.timeout(90)


def stub_classify(args: tuple[Any, ...], mode: str, images: ImageStore, task_id: str) -> ClassifyResult:
    """Check the arguments, read a stored image and decode fully, as a worker would."""
    image, top_k = ClassifyArgs.from_message(args)
    if image is None:
        image = images.get(task_id)
        assert image is not None, f"no stored image for {task_id}"
    started_at = time.time()
    try:
        with Image.open(io.BytesIO(image)) as img:
            img.load()
    except Exception as exc:
        raise InvalidImageError(f"cannot decode image: {exc}") from None
    digest = hashlib.sha1(image).hexdigest()  # lets each caller recognise its answer
    predictions: list[Prediction] = [{"class_id": i, "label": f"{digest}-{i}", "score": 1.0 / (i + 2)}
                                     for i in range(top_k)]
    return {"model": "stub", "version": "1", "prediction": predictions[0]["label"],
            "score": predictions[0]["score"], "predictions": predictions, "mode": mode, "batch_size": 1,
            "batch_id": None if mode == "individual" else "b", "started_at": started_at,
            "timings_ms": {"inference": 0.1}}


@pytest.fixture
def private(redis_url: str) -> dict[str, Any]:
    """Celery settings for this test alone: its own queue and pidbox, away from other runs' workers."""
    name = f"webapp-it-{uuid.uuid4().hex[:8]}"
    # Both queues, as celeryconfig names them after CELERY_QUEUE (sync first).
    queues = tuple(Queue(queue, routing_key=queue) for queue in (name, async_queue_of(name)))
    return {"broker_url": redis_url, "result_backend": redis_url, "task_default_queue": name,
            "task_queues": queues, "control_exchange": name}


@pytest.fixture
def stub_worker(clean_redis: redis.Redis, private: dict[str, Any]) -> Iterator[Celery]:
    app = Celery("webapp-stub-workers", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.update(private, worker_hijack_root_logger=False)

    images = ImageStore(clean_redis)

    @app.task(name=CLASSIFY_TASK, shared=False, bind=True)
    def classify(self: Task, *args: Any) -> ClassifyResult:
        return stub_classify(args, "individual", images, self.request.id)

    @app.task(name=CLASSIFY_BATCH_TASK, shared=False, bind=True)
    def classify_batch(self: Task, *args: Any) -> ClassifyResult:
        return stub_classify(args, "batch", images, self.request.id)

    with start_worker(app, pool="threads", concurrency=8, perform_ping_check=False,
                      loglevel="WARNING", shutdown_timeout=30):
        yield app
    app.close()


@pytest.fixture
def make_web(private: dict[str, Any]) -> Iterator[Callable[..., Flask]]:
    yield from web_apps(lambda config: {"TESTING": True, "RESULT_TIMEOUT": 20.0,
                                        "USE_BATCH_PROCESSING": False, **config,
                                        "CELERY": {**private, **config.get("CELERY", {})}})


def predict(app: Flask, image: bytes, query: str = "") -> Any:
    return app.test_client().post(f"/predict{query}", data={"file": (io.BytesIO(image), "x")},
                                  content_type="multipart/form-data")


@pytest.mark.parametrize("batch", [False, True])
def test_round_trips_sync_and_async_in_both_modes(stub_worker: Celery, make_web: Callable[..., Flask],
                                                  batch: bool) -> None:
    web = make_web(USE_BATCH_PROCESSING=batch)
    mode = "batch" if batch else "individual"
    image = make_image("JPEG")
    response = predict(web, image, "?top_k=3")
    assert response.status_code == 200, response.json
    body = json_of(response)
    assert set(body) == CONTRACT_KEYS and body["mode"] == mode and len(body["predictions"]) == 3
    assert body["prediction"].startswith(hashlib.sha1(image).hexdigest())
    assert 0 <= body["timings_ms"]["queue"] <= body["timings_ms"]["total"]
    accepted = predict(web, make_image(), "?async=true")
    assert accepted.status_code == 202
    # Block on the real result instead of sleeping between polls.
    waiter = web.extensions["dispatcher"].waiter
    with waiter.expecting(json_of(accepted)["task_id"]):
        waiter.wait(json_of(accepted)["task_id"], 20)
    polled = json_of(web.test_client().get(json_of(accepted)["status_url"]))
    assert (polled["status"], polled["task_id"], polled["result"]["mode"]) == (
        "SUCCESS", json_of(accepted)["task_id"], mode)
    assert web.test_client().get("/readyz").status_code == 200


def test_worker_client_errors_are_the_requests(make_web: Callable[..., Flask], stub_worker: Celery) -> None:
    web = make_web()
    image = make_image("JPEG", size=(256, 256))
    response = predict(web, image[: len(image) // 2])  # header intact: only the worker can tell
    assert (response.status_code, json_of(response)["error"]["code"]) == (400, "invalid_image")
    # A message whose arguments are not ClassifyArgs (sent around the web app).
    task_id, waiter = str(uuid.uuid4()), web.extensions["dispatcher"].waiter
    with waiter.expecting(task_id):
        web.extensions["celery"].send_task(CLASSIFY_TASK, args=(b"image", True), task_id=task_id)
        waiter.wait(task_id, 20)
    body = json_of(web.test_client().get(f"/tasks/{task_id}"))
    assert body["status"] == "FAILURE" and "result" not in body
    assert body["error"]["code"] == "invalid_request" and "top_k" in body["error"]["message"]


def test_not_ready_without_workers(make_web: Callable[..., Flask], clean_redis: redis.Redis) -> None:
    web = make_web()
    response = web.test_client().get("/readyz")
    assert response.status_code == 503
    model = web.extensions["dispatcher"].models.default_model
    assert response.json == {
        "status": "unavailable", "models_without_workers": [model.name],
        "reason": f"the default model {model.name} cannot serve: no live worker consumes its queue "
                  f"{model.queues['sync'].name}"}


@pytest.mark.parametrize("by_reference", [True, False])
def test_message_on_the_wire(clean_redis: redis.Redis, private: dict[str, Any],
                             make_web: Callable[..., Flask], by_reference: bool) -> None:
    """What a worker receives: the task name, positional args in msgpack, expires, argsrepr; on
    Redis the image beside the message under the task's key, until its deadline plus the grace."""
    app = make_web(IMAGES_BY_REFERENCE=by_reference)
    image = make_image("GIF")
    response = predict(app, image, "?async=true&top_k=4")
    assert response.status_code == 202
    [raw] = clean_redis.lrange(async_queue_of(private["task_default_queue"]), 0, -1)  # ?async=true's queue
    message = json.loads(raw)
    headers = message["headers"]
    assert headers["task"] == CLASSIFY_TASK and headers["id"] == json_of(response)["task_id"]
    assert headers["argsrepr"] == f"<image {len(image)} bytes>, top_k=4"
    assert headers["kwargsrepr"] == f"{{'model': {app.extensions['dispatcher'].models.default!r}}}"
    assert headers["expires"] is not None
    assert message["content-type"] == "application/x-msgpack"
    args, kwargs, _ = msgpack.unpackb(base64.b64decode(message["body"]), raw=False)
    assert args == [None if by_reference else image, 4] and kwargs == {}
    key, lifetime = image_key(headers["id"]), app.extensions["web_settings"].async_result_ttl + GRACE_SECONDS
    assert clean_redis.get(key) == (image if by_reference else None)
    assert (lifetime - 5 <= clean_redis.pttl(key) / 1000 <= lifetime) == by_reference  # -2 ms: no key


def test_unreachable_broker_is_503_quickly(clean_redis: redis.Redis, make_web: Callable[..., Flask]) -> None:
    app = make_web(CELERY={"broker_url": "redis://127.0.0.1:1/0"})
    started = time.monotonic()
    response = predict(app, make_image())
    assert (response.status_code, json_of(response)["error"]["code"]) == (503, "broker_unavailable")
    assert int(response.headers["Retry-After"]) > 0
    assert time.monotonic() - started < 10
