"""The API end to end over a real Redis broker and result store.

An embedded Celery worker (a thread, Celery's ``start_worker``) runs stand-in
tasks registered under the real task names, so the web app's path is real
from the HTTP request to the broker, the result key, pub/sub and back.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import redis
from flask import Flask
from PIL import Image
from werkzeug.test import TestResponse

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
from webapp import create_app

CONTRACT_KEYS = {"task_id", "model", "version", "prediction", "score", "predictions", "mode", "batch_size",
                 "timings_ms"}

pytestmark = pytest.mark.timeout(90)


def make_image(fmt: str = "PNG", size: tuple[int, int] = (32, 24), color: str = "teal") -> bytes:
    """A small synthetic image saved by Pillow."""
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def stub_classify(args: tuple[Any, ...], mode: str, images: ImageStore,
                  task_id: str) -> ClassifyResult:
    """Check the arguments, read a stored image and decode fully (as a worker would); answer in
    the contract's shape."""
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
    """Celery settings for this test alone: broker, queue and control exchange.

    Other test runs may share the Redis database; a queue and a pidbox of our
    own keep their workers from taking our tasks or answering our pings.
    """
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


def make_web_app(private: dict[str, Any], **config: Any) -> Flask:
    celery = {**private, **config.pop("CELERY", {})}
    return create_app({"TESTING": True, "RESULT_TIMEOUT": 20.0, "USE_BATCH_PROCESSING": False,
                       "CELERY": celery, **config})


@pytest.fixture
def web(private: dict[str, Any]) -> Iterator[Flask]:
    app = make_web_app(private)
    yield app
    app.extensions["result_waiter"].close()
    app.extensions["celery"].close()


def json_of(response: TestResponse) -> Any:
    """The response's JSON body (a failed assertion, not None, when there is none)."""
    assert response.is_json, response.data
    return response.json


def predict(app: Flask, image: bytes, query: str = "") -> Any:
    return app.test_client().post(f"/predict{query}", data={"file": (io.BytesIO(image), "x")},
                                  content_type="multipart/form-data")


def test_predict_round_trip(web: Flask, stub_worker: Celery) -> None:
    image = make_image("JPEG")
    response = predict(web, image, "?top_k=3")
    assert response.status_code == 200, response.json
    body = json_of(response)
    assert set(body) == CONTRACT_KEYS
    assert body["mode"] == "individual" and len(body["predictions"]) == 3
    assert body["prediction"].startswith(hashlib.sha1(image).hexdigest())
    timings = body["timings_ms"]
    assert timings["queue"] >= 0 and timings["total"] >= timings["queue"]


def test_batch_mode_sends_the_batch_task(stub_worker: Celery, private: dict[str, Any]) -> None:
    app = make_web_app(private, USE_BATCH_PROCESSING=True)
    assert json_of(predict(app, make_image()))["mode"] == "batch"
    app.extensions["result_waiter"].close()


def test_truncated_image_is_400_from_the_worker(web: Flask, stub_worker: Celery) -> None:
    image = make_image("JPEG", size=(256, 256), color="red")
    truncated = image[: len(image) // 2]  # header intact: only the worker can tell
    response = predict(web, truncated)
    assert response.status_code == 400
    assert json_of(response)["error"]["code"] == "invalid_image"


def test_malformed_task_arguments_are_an_invalid_request(web: Flask, stub_worker: Celery) -> None:
    """A message whose arguments are not ``ClassifyArgs`` (sent around the web app)."""
    task_id = web.extensions["celery"].send_task(CLASSIFY_TASK, args=(b"image", True)).id
    web.extensions["result_waiter"].wait(task_id, 20)
    body = json_of(web.test_client().get(f"/tasks/{task_id}"))
    assert body["status"] == "FAILURE" and "result" not in body
    assert body["error"]["code"] == "invalid_request" and "top_k" in body["error"]["message"]


def test_concurrent_requests_each_get_their_own_answer(web: Flask, stub_worker: Celery) -> None:
    images = [make_image("PNG", size=(16 + i, 16)) for i in range(32)]
    answers: dict[int, Any] = {}

    def one(index: int) -> None:
        response = predict(web, images[index])
        answers[index] = (response.status_code, response.json)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for index, image in enumerate(images):
        status, body = answers[index]
        assert status == 200, body
        assert body["prediction"].startswith(hashlib.sha1(image).hexdigest())
    assert len({body["task_id"] for _, body in answers.values()}) == len(images)


def test_async_then_poll(web: Flask, stub_worker: Celery) -> None:
    response = predict(web, make_image(), "?async=true")
    assert response.status_code == 202
    task_id = json_of(response)["task_id"]
    # Block on the real result instead of sleeping between polls.
    web.extensions["result_waiter"].wait(task_id, 20)
    body = json_of(web.test_client().get(json_of(response)["status_url"]))
    assert body["status"] == "SUCCESS" and body["task_id"] == task_id
    assert body["result"]["mode"] == "individual"


def test_ready_with_a_live_worker(web: Flask, stub_worker: Celery) -> None:
    response = web.test_client().get("/readyz")
    assert response.status_code == 200, response.json


def test_not_ready_without_workers(web: Flask, clean_redis: redis.Redis) -> None:
    response = web.test_client().get("/readyz")
    assert response.status_code == 503
    model = web.extensions["models"].default_model
    assert response.json == {
        "status": "unavailable", "models_without_workers": [model.name],
        "reason": f"the default model {model.name} cannot serve: no live worker consumes its queue "
                  f"{model.queues['sync'].name}"}


@pytest.mark.parametrize("by_reference", [True, False])
def test_message_on_the_wire(clean_redis: redis.Redis, private: dict[str, Any], by_reference: bool) -> None:
    """What a worker receives: the task name, positional args in msgpack, expires, argsrepr; on
    Redis the image beside the message under the task's key, until its deadline plus the grace."""
    app = make_web_app(private, RESULT_TIMEOUT=30.0, IMAGES_BY_REFERENCE=by_reference)
    image = make_image("GIF")
    response = predict(app, image, "?async=true&top_k=4")
    assert response.status_code == 202
    [raw] = clean_redis.lrange(async_queue_of(private["task_default_queue"]), 0, -1)  # ?async=true's queue
    message = json.loads(raw)
    headers = message["headers"]
    assert headers["task"] == CLASSIFY_TASK and headers["id"] == json_of(response)["task_id"]
    assert headers["argsrepr"] == f"<image {len(image)} bytes>, top_k=4"
    assert headers["expires"] is not None
    assert message["content-type"] == "application/x-msgpack"
    args, kwargs, _ = msgpack.unpackb(base64.b64decode(message["body"]), raw=False)
    assert args == [None if by_reference else image, 4] and kwargs == {}
    key, lifetime = image_key(headers["id"]), app.config["ASYNC_RESULT_TTL"] + GRACE_SECONDS
    assert clean_redis.get(key) == (image if by_reference else None)
    assert (lifetime - 5 <= clean_redis.pttl(key) / 1000 <= lifetime) == by_reference  # -2 ms: no key


def test_unreachable_broker_is_503_quickly(clean_redis: redis.Redis, private: dict[str, Any]) -> None:
    app = make_web_app(private, CELERY={"broker_url": "redis://127.0.0.1:1/0"})
    started = time.monotonic()
    response = predict(app, make_image())
    assert response.status_code == 503
    assert json_of(response)["error"]["code"] == "broker_unavailable"
    assert int(response.headers["Retry-After"]) > 0
    assert time.monotonic() - started < 10
