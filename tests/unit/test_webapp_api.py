"""HTTP contract of /predict and /tasks/<id>, with the broker replaced at the seam.

``webapp.dispatch.send`` (publishing) and ``ResultWaiter.wait`` (the result)
are the only things faked; everything else is the real app.
"""
from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError
from werkzeug.test import TestResponse

from kombu.exceptions import OperationalError

from common.contract import (
    CLASSIFY_BATCH_TASK,
    CLASSIFY_TASK,
    WIRE_ERROR_CODES,
    ClassifyResult,
    InvalidImageError,
    InvalidMessageError,
)
from tests.support.images import make_image, png_header
from webapp import create_app, dispatch, health
from webapp.exceptions import ResultTimeout

CONTRACT_KEYS = {"task_id", "model", "version", "prediction", "score", "predictions", "mode", "batch_size",
                 "timings_ms"}


def success_meta(task_id: str, top_k: int = 5, started_at: float | None = None) -> dict[str, Any]:
    """A ready meta shaped like the workers' result (contract)."""
    result: ClassifyResult = {
        "model": "efficientnet_lite0", "version": "1", "prediction": "label 0", "score": 0.5,
        "predictions": [{"class_id": i, "label": f"label {i}", "score": 0.5 / (i + 1)} for i in range(top_k)],
        "mode": "individual", "batch_size": 1, "batch_id": None,
        "started_at": time.time() if started_at is None else started_at,
        "timings_ms": {"inference": 12.5},
    }
    return {"task_id": task_id, "status": "SUCCESS", "result": result}


class FakeQueue:
    """Records what would be sent and answers each wait with ``reply(task_id)``."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.waited: list[str] = []
        self.reply: Callable[[str], dict[str, Any]] = self._success

    def _success(self, task_id: str) -> dict[str, Any]:
        return success_meta(task_id, top_k=self.sent[-1]["top_k"])

    def send(self, celery: Any, name: str, image: bytes, top_k: int, *,
             task_id: str, queue: str, expires: float, retry_after: int, images: Any,
             model: str = "") -> None:
        self.sent.append({"name": name, "image": image, "top_k": top_k, "task_id": task_id,
                          "queue": queue, "expires": expires, "images": images, "sent_at": time.time()})

    def wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        self.waited.append(task_id)
        return self.reply(task_id)


class FakeAccepted:
    """In-memory stand-in for ``webapp.accepted.AcceptedTasks``: owner and TTL by task id."""

    def __init__(self) -> None:
        self.records: dict[str, tuple[str, float]] = {}

    def record(self, task_id: str, owner: str, ttl: float) -> None:
        self.records[task_id] = (owner, ttl)

    def owner(self, task_id: str) -> str | None:
        record = self.records.get(task_id)
        return None if record is None else record[0]

    def forget(self, task_id: str) -> None:
        self.records.pop(task_id, None)


class Api:
    """Request helpers for the upload API."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def upload(self, data: bytes, filename: str = "image.png", query: str = "", **form: Any) -> TestResponse:
        fields = {"file": (io.BytesIO(data), filename), **form}
        return self.client.post(f"/predict{query}", data=fields, content_type="multipart/form-data")

    def raw(self, data: bytes, query: str = "",
            content_type: str = "application/octet-stream") -> TestResponse:
        return self.client.post(f"/predict{query}", data=data, content_type=content_type)


@pytest.fixture
def app() -> Iterator[Flask]:
    yield create_app({
        "TESTING": True,
        "USE_BATCH_PROCESSING": False,
        "RESULT_TIMEOUT": 7.0,
        "DEFAULT_TOP_K": 5,
        "MAX_UPLOAD_MB": 1.0,
        "MAX_IMAGE_PIXELS": 40_000_000,
        # Never contacted: the seam is faked.
        "CELERY": {"broker_url": "memory://", "result_backend": "redis://127.0.0.1:6379/15"},
    })


@pytest.fixture
def accepted(app: Flask, monkeypatch: pytest.MonkeyPatch) -> FakeAccepted:
    fake = FakeAccepted()
    monkeypatch.setitem(app.extensions, "accepted", fake)
    return fake


def fake_seam(app: Flask, monkeypatch: pytest.MonkeyPatch) -> FakeQueue:
    """``dispatch.send`` and the result waiter replaced by a :class:`FakeQueue`; the readiness
    probe answers at once, with a worker on every model's queues."""
    fake = FakeQueue()
    monkeypatch.setattr(dispatch, "send", fake.send)
    monkeypatch.setattr(app.extensions["result_waiter"], "wait", fake.wait)
    queues = [queue.name for model in app.extensions["models"].by_name.values()
              for queue in model.queues.values()]
    monkeypatch.setattr(health, "ping_broker", lambda celery: None)
    monkeypatch.setattr(health, "worker_queues", lambda celery: [queues])
    return fake


@pytest.fixture
def queue(app: Flask, accepted: FakeAccepted, monkeypatch: pytest.MonkeyPatch) -> FakeQueue:
    return fake_seam(app, monkeypatch)


@pytest.fixture
def api(app: Flask, queue: FakeQueue) -> Api:
    return Api(app.test_client())


def json_of(response: TestResponse) -> Any:
    """The response's JSON body (a failed assertion, not None, when there is none)."""
    assert response.is_json, response.data
    return response.json


def assert_error(response: TestResponse, status: int, code: str) -> None:
    assert response.status_code == status, response.data
    assert response.is_json
    assert response.json == {"error": {"code": code, "message": json_of(response)["error"]["message"]}}
    assert json_of(response)["error"]["message"]


# -- success -------------------------------------------------------------------

def test_predict_returns_contract_body(api: Api, queue: FakeQueue) -> None:
    response = api.upload(make_image("PNG"))
    assert response.status_code == 200
    body = json_of(response)
    assert set(body) == CONTRACT_KEYS
    assert body["task_id"] == queue.sent[0]["task_id"] == queue.waited[0]
    assert body["prediction"] == "label 0" and len(body["predictions"]) == 5
    assert set(body["timings_ms"]) == {"queue", "inference", "total"}
    assert body["timings_ms"]["inference"] == 12.5
    assert body["timings_ms"]["queue"] >= 0 and body["timings_ms"]["total"] >= 0


def test_queue_time_is_worker_start_minus_send_time(api: Api, queue: FakeQueue) -> None:
    queue.reply = lambda task_id: success_meta(task_id, started_at=queue.sent[0]["sent_at"] + 0.25)
    timings = json_of(api.upload(make_image()))["timings_ms"]
    assert 250 <= timings["queue"] <= 300


def test_sends_individual_task_by_name_with_expires(api: Api, queue: FakeQueue) -> None:
    before = time.time()
    image = make_image("JPEG")
    api.upload(image, top_k="3")
    [sent] = queue.sent
    assert sent["name"] == CLASSIFY_TASK
    assert sent["image"] == image and sent["top_k"] == 3
    # expires: the absolute deadline, RESULT_TIMEOUT (7 s) after the request arrived.
    assert before + 7.0 <= sent["expires"].timestamp() <= sent["sent_at"] + 7.0


def test_batch_mode_sends_batch_task(app: Flask, api: Api, queue: FakeQueue) -> None:
    app.config["USE_BATCH_PROCESSING"] = True
    assert api.upload(make_image()).status_code == 200
    assert queue.sent[0]["name"] == CLASSIFY_BATCH_TASK


def test_raw_body_with_top_k_in_query(api: Api, queue: FakeQueue) -> None:
    image = make_image("WEBP")
    response = api.raw(image, query="?top_k=2", content_type="image/webp")
    assert response.status_code == 200
    assert queue.sent[0]["image"] == image and queue.sent[0]["top_k"] == 2


def test_multipart_top_k_from_query_when_form_has_none(api: Api, queue: FakeQueue) -> None:
    api.upload(make_image(), query="?top_k=7")
    assert queue.sent[0]["top_k"] == 7


@pytest.mark.parametrize(
    ("fmt", "mode", "save"),
    [("JPEG", "RGB", {}), ("JPEG", "CMYK", {}), ("JPEG", "RGB", {"progressive": True}), ("PNG", "I;16", {}),
     ("PNG", "P", {}), ("PNG", "RGBA", {}), ("WEBP", "RGB", {}), ("GIF", "P", {}), ("BMP", "RGB", {}),
     ("TIFF", "RGB", {})],
)
def test_accepted_formats_are_sent(api: Api, queue: FakeQueue, fmt: str, mode: str,
                                   save: dict[str, Any]) -> None:
    # The file name lies on purpose: only the bytes count.
    assert api.upload(make_image(fmt, mode, **save), filename="upload.bin").status_code == 200
    assert len(queue.sent) == 1


def test_async_returns_202_with_status_url(api: Api, queue: FakeQueue) -> None:
    response = api.upload(make_image(), query="?async=true")
    assert response.status_code == 202
    task_id = queue.sent[0]["task_id"]
    assert response.json == {"task_id": task_id, "status_url": f"/tasks/{task_id}"}
    assert response.headers["Location"].endswith(f"/tasks/{task_id}")
    assert queue.waited == []


def test_async_task_expires_at_async_ttl_and_is_recorded(app: Flask, api: Api, queue: FakeQueue,
                                                         accepted: FakeAccepted) -> None:
    app.config.update(ASYNC_RESULT_TTL=300.0, RESULT_EXPIRES=3600)
    before = time.time()
    api.upload(make_image(), query="?async=true")
    [sent] = queue.sent
    assert before + 300.0 <= sent["expires"].timestamp() <= sent["sent_at"] + 300.0
    owner, ttl = accepted.records[sent["task_id"]]
    assert owner == "" and 3600 + 299 < ttl <= 3600 + 300


# -- invalid input is never sent ----------------------------------------------

@pytest.mark.parametrize(
    ("data", "filename", "status", "code"),
    [
        (b"this is plain text, not a cat", "cat.jpg", 415, "unsupported_media_type"),
        (make_image("PNG")[:20], "cut.png", 400, "invalid_image"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00", "corrupt.png", 400, "invalid_image"),
        (png_header(8000, 6000), "big.png", 400, "image_too_large"),
        (png_header(100_000, 100_000), "bomb.png", 400, "image_too_large"),
        (b"", "empty.png", 400, "missing_image"),
    ],
    ids=["text-as-jpg", "truncated-png", "corrupt-png-header", "over-pixels", "pixel-bomb", "empty"],
)
def test_bad_images_are_rejected_unsent(api: Api, queue: FakeQueue, data: bytes, filename: str,
                                        status: int, code: str) -> None:
    assert_error(api.upload(data, filename=filename), status, code)
    assert queue.sent == []


def test_text_with_image_content_type_is_415(api: Api, queue: FakeQueue) -> None:
    assert_error(api.raw(b"GET / HTTP/1.1", content_type="image/jpeg"), 415, "unsupported_media_type")
    assert queue.sent == []


@pytest.mark.parametrize("top_k", ["0", "1001", "-3", "2.5", "five", "1e3"])
def test_bad_top_k_is_400(api: Api, queue: FakeQueue, top_k: str) -> None:
    assert_error(api.upload(make_image(), top_k=top_k), 400, "invalid_parameter")
    assert_error(api.raw(make_image(), query=f"?top_k={top_k}"), 400, "invalid_parameter")
    assert queue.sent == []


def test_multipart_without_file_field_is_400(api: Api, queue: FakeQueue) -> None:
    response = api.client.post("/predict", data={"image": (io.BytesIO(make_image()), "a.png")},
                               content_type="multipart/form-data")
    assert_error(response, 400, "missing_image")
    assert queue.sent == []


def test_oversize_body_is_413_before_reading(api: Api, queue: FakeQueue) -> None:
    response = api.raw(b"\0" * (2 * 1024 * 1024))
    assert_error(response, 413, "payload_too_large")
    assert queue.sent == []


def test_file_just_over_limit_is_413(app: Flask, api: Api, queue: FakeQueue) -> None:
    # Fits in the multipart slack of MAX_CONTENT_LENGTH, still over MAX_UPLOAD_MB.
    data = make_image("BMP", size=(600, 600))
    app.config["MAX_UPLOAD_BYTES"] = len(data) - 1
    assert_error(api.upload(data), 413, "payload_too_large")
    assert queue.sent == []


# -- broker and worker failures ------------------------------------------------

@pytest.mark.parametrize("error", [OperationalError("Error 111 connecting"), RedisConnectionError("refused")])
def test_broker_down_is_503_with_retry_after(app: Flask, error: Exception,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The real ``dispatch.send``; only Celery's ``send_task`` fails."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(app.extensions["celery"], "send_task", refuse)
    response = Api(app.test_client()).upload(make_image())
    assert_error(response, 503, "broker_unavailable")
    assert int(response.headers["Retry-After"]) > 0


def test_timeout_is_504(api: Api, queue: FakeQueue) -> None:
    def never(task_id: str) -> dict[str, Any]:
        raise ResultTimeout(task_id, 7.0)

    queue.reply = never
    assert_error(api.upload(make_image()), 504, "timeout")


def test_expired_task_is_504(api: Api, queue: FakeQueue) -> None:
    queue.reply = lambda task_id: {"task_id": task_id, "status": "REVOKED", "result": None}
    assert_error(api.upload(make_image()), 504, "expired")


def failure_meta(task_id: str, error: type[Exception], message: str) -> dict[str, Any]:
    """A FAILURE meta as Celery stores a worker's exception."""
    return {"task_id": task_id, "status": "FAILURE", "result": {
        "exc_type": error.__name__, "exc_message": [message], "exc_module": error.__module__}}


def test_worker_invalid_image_is_400(api: Api, queue: FakeQueue) -> None:
    queue.reply = lambda task_id: failure_meta(task_id, InvalidImageError, "image file is truncated")
    response = api.upload(make_image())
    assert_error(response, 400, "invalid_image")
    assert "truncated" in json_of(response)["error"]["message"]


def test_worker_invalid_message_is_400(api: Api, queue: FakeQueue) -> None:
    queue.reply = lambda task_id: failure_meta(task_id, InvalidMessageError, "top_k must be an int")
    response = api.upload(make_image())
    assert_error(response, 400, "invalid_request")
    assert "top_k must be an int" in json_of(response)["error"]["message"]


def test_other_worker_failure_is_502(api: Api, queue: FakeQueue) -> None:
    queue.reply = lambda task_id: failure_meta(task_id, RuntimeError, "CUDA out of memory")
    response = api.upload(make_image())
    assert_error(response, 502, "worker_error")
    assert "RuntimeError: CUDA out of memory" in json_of(response)["error"]["message"]


# -- GET /tasks/<id> -------------------------------------------------------------

@pytest.fixture
def stored(app: Flask, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """Metas the result store holds, by task id (replaces the GET)."""
    metas: dict[str, dict[str, Any]] = {}
    monkeypatch.setattr(app.extensions["result_waiter"], "fetch", metas.get)
    return metas


def test_unknown_task_is_404(app: Flask, stored: dict[str, Any], accepted: FakeAccepted) -> None:
    assert_error(app.test_client().get("/tasks/nope"), 404, "not_found")


def test_accepted_task_without_result_is_pending(app: Flask, stored: dict[str, Any],
                                                 accepted: FakeAccepted) -> None:
    accepted.record("t0", "", 60.0)
    response = app.test_client().get("/tasks/t0")
    assert response.status_code == 200
    assert response.json == {"task_id": "t0", "status": "PENDING"}


def test_finished_task_has_result(app: Flask, stored: dict[str, Any], accepted: FakeAccepted) -> None:
    stored["t1"] = success_meta("t1")
    body = json_of(app.test_client().get("/tasks/t1"))
    assert body["status"] == "SUCCESS" and body["result"]["prediction"] == "label 0"
    assert "error" not in body


@pytest.mark.parametrize(
    ("meta", "code"),
    [*(({"status": "FAILURE", "result": {"exc_type": exc_type, "exc_message": ["bad"]}}, code)
       for exc_type, code in WIRE_ERROR_CODES.items()),
     ({"status": "FAILURE", "result": {"exc_type": "ValueError", "exc_message": ["x"]}}, "worker_error"),
     ({"status": "REVOKED", "result": None}, "expired")],
)
def test_failed_task_has_error(app: Flask, stored: dict[str, Any], accepted: FakeAccepted,
                               meta: dict[str, Any], code: str) -> None:
    stored["t2"] = meta
    body = json_of(app.test_client().get("/tasks/t2"))
    assert body["status"] == meta["status"]
    assert body["error"]["code"] == code and "result" not in body


def test_result_store_down_is_503(app: Flask, accepted: FakeAccepted,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(task_id: str) -> None:
        raise RedisConnectionError("refused")

    monkeypatch.setattr(app.extensions["result_waiter"], "fetch", refuse)
    response = app.test_client().get("/tasks/t3")
    assert_error(response, 503, "broker_unavailable")
    assert "Retry-After" in response.headers


# -- routing errors are JSON -------------------------------------------------------

def test_unknown_route_is_json_404(app: Flask) -> None:
    assert_error(app.test_client().get("/no/such/page"), 404, "not_found")


def test_wrong_method_is_json_405(app: Flask) -> None:
    response = app.test_client().get("/predict")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]


# -- deadlines -------------------------------------------------------------------

@pytest.mark.parametrize("how", ["query", "Request-Timeout", "X-Request-Timeout"])
def test_client_deadline_shortens_expires(api: Api, queue: FakeQueue, how: str) -> None:
    before = time.time()
    if how == "query":
        api.upload(make_image(), query="?timeout=2.5")
    else:
        api.client.post("/predict", data=make_image(), content_type="image/png", headers={how: "2.5"})
    [sent] = queue.sent
    assert before + 2.5 <= sent["expires"].timestamp() <= sent["sent_at"] + 2.5


def test_client_deadline_never_exceeds_result_timeout(api: Api, queue: FakeQueue) -> None:
    api.upload(make_image(), query="?timeout=9999")
    assert queue.sent[0]["expires"].timestamp() <= queue.sent[0]["sent_at"] + 7.0


@pytest.mark.parametrize("timeout", ["0", "-1", "soon", "nan", "inf", "1e999", "9" * 40])
def test_bad_client_deadline_is_400_unsent(api: Api, queue: FakeQueue, timeout: str) -> None:
    assert_error(api.upload(make_image(), query=f"?timeout={timeout}"), 400, "invalid_parameter")
    assert_error(api.client.post("/predict", data=make_image(), content_type="image/png",
                                 headers={"Request-Timeout": timeout}), 400, "invalid_parameter")
    assert queue.sent == []


def test_sync_timeout_revokes_its_task(app: Flask, api: Api, queue: FakeQueue,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    revoked: list[str] = []
    monkeypatch.setattr(app.extensions["celery"].control, "revoke", revoked.append)

    def never(task_id: str) -> dict[str, Any]:
        raise ResultTimeout(task_id, 7.0)

    queue.reply = never
    assert_error(api.upload(make_image()), 504, "timeout")
    assert revoked == [queue.sent[0]["task_id"]]
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'webapp_revoked_tasks_total{model="efficientnet_lite0"} 1.0' in text


def test_wait_is_bounded_by_the_client_deadline(app: Flask, api: Api, queue: FakeQueue,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    timeouts: list[float] = []
    real_wait = queue.wait

    def wait(task_id: str, timeout: float) -> dict[str, Any]:
        timeouts.append(timeout)
        return real_wait(task_id, timeout)

    monkeypatch.setattr(app.extensions["result_waiter"], "wait", wait)
    assert api.upload(make_image(), query="?timeout=1.5").status_code == 200
    assert 0 < timeouts[0] <= 1.5


# -- admission -------------------------------------------------------------------

def set_queue(app: Flask, monkeypatch: pytest.MonkeyPatch, kind: str, limit: int, length: int | None) -> str:
    """Give the app's ``kind`` queue (``sync`` or ``async``) a fixed length and limit; return its name."""
    bounded = app.extensions["models"].default_model.queues[kind]
    monkeypatch.setattr(bounded, "limit", limit)
    monkeypatch.setattr(bounded, "length", FixedLength(length, bounded.name))
    return str(bounded.name)


class FixedLength:
    """Stands in for ``QueueLength``."""

    def __init__(self, length: int | None, queue: str) -> None:
        self.length = length
        self.queue = queue

    def get(self) -> int | None:
        return self.length


@pytest.mark.parametrize(("query", "kind"), [("", "sync"), ("?async=true", "async")])
def test_full_queue_is_503_before_sending(app: Flask, api: Api, queue: FakeQueue, accepted: FakeAccepted,
                                          monkeypatch: pytest.MonkeyPatch, query: str, kind: str) -> None:
    name = set_queue(app, monkeypatch, kind, limit=10, length=10)
    response = api.upload(make_image(), query=query)
    assert_error(response, 503, "overloaded")
    assert int(response.headers["Retry-After"]) > 0
    assert queue.sent == [] and accepted.records == {}
    text = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'webapp_rejected_requests_total{model="efficientnet_lite0",reason="queue_full"} 1.0' in text
    assert f'webapp_queue_length{{model="efficientnet_lite0",queue="{name}"}} 10.0' in text


@pytest.mark.parametrize(("query", "kind"), [("", "sync"), ("?async=true", "async")])
def test_full_queue_refuses_before_the_upload_is_read(app: Flask, monkeypatch: pytest.MonkeyPatch,
                                                      query: str, kind: str) -> None:
    set_queue(app, monkeypatch, kind, limit=1, length=1)
    # Not an image at all: with room it would be 415; full, nobody looks at it.
    response = app.test_client().post(f"/predict{query}", data=b"plain text", content_type="image/png")
    assert_error(response, 503, "overloaded")


@pytest.mark.parametrize(("query", "kind", "other"),
                         [("", "sync", "async"), ("?async=true", "async", "sync")])
def test_each_request_goes_to_its_own_queue_whatever_the_other_holds(
        app: Flask, api: Api, queue: FakeQueue, monkeypatch: pytest.MonkeyPatch, query: str, kind: str,
        other: str) -> None:
    set_queue(app, monkeypatch, other, limit=10, length=10)  # the other queue is full
    name = set_queue(app, monkeypatch, kind, limit=10, length=9)
    assert api.upload(make_image(), query=query).status_code in (200, 202)
    assert [sent["queue"] for sent in queue.sent] == [name]
    assert name.endswith(".async") == (kind == "async")


@pytest.mark.parametrize(("limit", "length"), [(10, 9), (0, 10_000), (10, None)])
def test_queue_below_limit_unbounded_or_unknown_is_admitted(app: Flask, api: Api, queue: FakeQueue,
                                                            monkeypatch: pytest.MonkeyPatch, limit: int,
                                                            length: int | None) -> None:
    set_queue(app, monkeypatch, "sync", limit, length)
    assert api.upload(make_image()).status_code == 200


def test_full_waiting_slots_answer_503_at_once(app: Flask, api: Api, queue: FakeQueue) -> None:
    waiting = app.extensions["waiting_requests"]
    inside: list[Any] = []

    def reply(task_id: str) -> dict[str, Any]:
        # While this request waits, every slot is taken: a second is refused.
        inside.append(api.upload(make_image()))
        inside.append((waiting.count(), waiting.oldest_age()))
        return success_meta(task_id)

    app.extensions["waiting_requests"].limit = 1
    queue.reply = reply
    assert api.upload(make_image()).status_code == 200
    refused, (count, age) = inside
    assert_error(refused, 503, "overloaded")
    assert "Retry-After" in refused.headers
    assert count == 1 and age >= 0
    assert len(queue.sent) == 1 and waiting.count() == 0


def test_waiting_limit_defaults_below_gunicorn_threads() -> None:
    app = create_app({"WEB_THREADS": 64, "MAX_WAITING_REQUESTS": None,
                      "CELERY": {"broker_url": "memory://", "result_backend": "redis://127.0.0.1:6379/15"}})
    assert app.extensions["waiting_requests"].limit == 60


@pytest.mark.parametrize("query", ["", "?async=true"])
def test_redis_out_of_memory_is_503_not_500(app: Flask, accepted: FakeAccepted,
                                            monkeypatch: pytest.MonkeyPatch, query: str) -> None:
    """The real ``dispatch.send``; Celery's ``send_task`` meets ``maxmemory`` + ``noeviction``."""
    def refuse(*args: Any, **kwargs: Any) -> None:
        try:
            raise OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory'.")
        except OutOfMemoryError as exc:
            raise OperationalError(str(exc)) from exc  # as kombu wraps it

    monkeypatch.setattr(app.extensions["celery"], "send_task", refuse)
    response = Api(app.test_client()).upload(make_image(), query=query)
    assert_error(response, 503, "overloaded")
    assert "Retry-After" in response.headers
    assert accepted.records == {}  # a refused async task leaves no record


def test_recording_an_async_task_out_of_memory_is_503(app: Flask, api: Api, queue: FakeQueue,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(task_id: str, owner: str, ttl: float) -> None:
        raise OutOfMemoryError("OOM command not allowed")

    monkeypatch.setattr(app.extensions["accepted"], "record", refuse)
    assert_error(api.upload(make_image(), query="?async=true"), 503, "overloaded")
    assert queue.sent == []


# -- API keys ----------------------------------------------------------------------

def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": "Basic a2V5LW9uZQ=="},
                                     {"Authorization": "Bearer"}, bearer("key-one x"), bearer("key-")])
def test_keys_on_missing_or_wrong_key_is_401(app: Flask, api: Api, queue: FakeQueue,
                                             headers: dict[str, str]) -> None:
    app.config["API_KEYS"] = ("key-one", "key-two")
    posted = api.client.post("/predict", data=make_image(), content_type="image/png", headers=headers)
    for response in (posted, api.client.get("/tasks/t1", headers=headers)):
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert queue.sent == []


def test_keys_on_task_answers_only_its_creator(app: Flask, api: Api, queue: FakeQueue,
                                               stored: dict[str, Any]) -> None:
    app.config["API_KEYS"] = ("key-one", "key-two")
    response = api.client.post("/predict?async=true", data=make_image(), content_type="image/png",
                               headers=bearer("key-one"))
    assert response.status_code == 202
    status_url = json_of(response)["status_url"]
    stored[json_of(response)["task_id"]] = success_meta(json_of(response)["task_id"])
    assert api.client.get(status_url, headers=bearer("key-one")).status_code == 200
    assert_error(api.client.get(status_url, headers=bearer("key-two")), 404, "not_found")
    # A finished task nobody recorded (e.g. a sync one) is nobody's to read.
    stored["other"] = success_meta("other")
    assert_error(api.client.get("/tasks/other", headers=bearer("key-one")), 404, "not_found")


def test_keys_on_valid_key_classifies(app: Flask, api: Api, queue: FakeQueue) -> None:
    app.config["API_KEYS"] = ("key-one",)
    response = api.client.post("/predict", data=make_image(), content_type="image/png",
                               headers=bearer("key-one"))
    assert response.status_code == 200 and len(queue.sent) == 1


def test_keys_on_page_is_off(app: Flask, queue: FakeQueue) -> None:
    app.config["API_KEYS"] = ("key-one",)
    client = app.test_client()
    assert client.get("/").status_code == 404
    posted = client.post("/", data={"file": (io.BytesIO(make_image()), "a.png")},
                         content_type="multipart/form-data", headers=bearer("key-one"))
    assert posted.status_code == 404 and queue.sent == []


def test_metrics_can_be_taken_off_the_public_port(app: Flask) -> None:
    app.config["METRICS_PUBLIC"] = False
    assert_error(app.test_client().get("/metrics"), 404, "not_found")
