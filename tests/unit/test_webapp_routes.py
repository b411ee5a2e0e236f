"""The HTTP contract of every route: only publishing, the waiter's ``wait``/``fetch``, the accepted-task
records and the readiness probes are faked; the rest is the real app."""
from __future__ import annotations

import base64
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError
from werkzeug.test import TestResponse

from kombu.exceptions import OperationalError

from common.contract import CLASSIFY_BATCH_TASK, CLASSIFY_TASK, WIRE_ERROR_CODES, WIRE_ERRORS, ClassifyResult
from tests.support.images import make_image, png_header
from webapp import create_app, operations
from webapp.errors import STATUS

CONTRACT_KEYS = {"task_id", "model", "version", "prediction", "score", "predictions", "mode", "batch_size",
                 "timings_ms"}
CELERY = {"broker_url": "memory://", "result_backend": "redis://127.0.0.1:6379/15"}  # never contacted


def success_meta(task_id: str, top_k: int = 5, started_at: float | None = None) -> dict[str, Any]:
    result: ClassifyResult = {
        "model": "efficientnet_lite0", "version": "1", "prediction": "label 0", "score": 0.5,
        "predictions": [{"class_id": i, "label": f"label {i}", "score": 0.5 / (i + 1)} for i in range(top_k)],
        "mode": "individual", "batch_size": 1, "batch_id": None,
        "started_at": time.time() if started_at is None else started_at, "timings_ms": {"inference": 12.5}}
    return {"task_id": task_id, "status": "SUCCESS", "result": result}


def failure(exc_type: str, *message: str) -> dict[str, Any]:
    return {"status": "FAILURE", "result": {"exc_type": exc_type, "exc_message": list(message)}}


class FakeAccepted(dict[str, tuple[str, float]]):
    """The accepted-task records: task id -> (owner, ttl)."""

    def record(self, task_id: str, owner: str, ttl: float) -> None:
        self[task_id] = (owner, ttl)

    def owner(self, task_id: str) -> str | None:
        return self[task_id][0] if task_id in self else None

    def forget(self, task_id: str) -> None:
        self.pop(task_id, None)


class FakeQueue:
    """Records what would be sent, answers each wait with ``reply(task_id)``; ``stored``: the stored metas.
    Installed, it holds the app, its dispatcher, the accepted-task records and a test client."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.waited: list[tuple[str, float]] = []
        self.stored: dict[str, dict[str, Any]] = {}
        self.accepted = FakeAccepted()
        self.reply: Callable[[str], dict[str, Any]] = lambda task_id: success_meta(
            task_id, top_k=self.sent[-1]["top_k"])

    def send(self, model: Any, image: bytes, top_k: int, *, task_id: str, asynchronous: bool,
             deadline: Any) -> None:
        batch = model.batch_mode(self.app.extensions["web_settings"].use_batch_processing)
        self.sent.append({"name": CLASSIFY_BATCH_TASK if batch else CLASSIFY_TASK, "image": image,
                          "top_k": top_k, "task_id": task_id, "expires": deadline.expires(),
                          "queue": model.queues["async" if asynchronous else "sync"].name,
                          "sent_at": time.time()})

    def wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        self.waited.append((task_id, timeout))
        return self.reply(task_id)

    def install(self, app: Flask, monkeypatch: pytest.MonkeyPatch) -> FakeQueue:
        """Fake ``app``'s seams; the readiness probe sees a worker on every model's queues."""
        self.app, self.client, self.dispatcher = app, app.test_client(), app.extensions["dispatcher"]
        monkeypatch.setattr(self.dispatcher, "send", self.send)
        monkeypatch.setattr(self.dispatcher, "accepted", self.accepted)
        monkeypatch.setattr(self.dispatcher.waiter, "wait", self.wait)
        monkeypatch.setattr(self.dispatcher.waiter, "fetch", self.stored.get)
        queues = [queue.name for model in self.dispatcher.models.by_name.values()
                  for queue in model.queues.values()]
        monkeypatch.setattr(operations, "ping_broker", lambda celery: None)
        monkeypatch.setattr(operations, "worker_queues", lambda celery: [queues])
        return self


def make_app(**config: Any) -> Flask:
    return create_app({"TESTING": True, "USE_BATCH_PROCESSING": False, "RESULT_TIMEOUT": 7.0,
                       "DEFAULT_TOP_K": 5, "MAX_UPLOAD_MB": 1.0, "MAX_IMAGE_PIXELS": 40_000_000,
                       "CELERY": CELERY, **config})


Serve = Callable[..., FakeQueue]


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Serve:
    """``serve(**config)``: the installed FakeQueue of a ``make_app(**config)``."""
    return lambda **config: FakeQueue().install(make_app(**config), monkeypatch)


@pytest.fixture
def queue(serve: Serve) -> FakeQueue:
    return serve()


def upload(client: FlaskClient, data: bytes | None = None, path: str = "/predict", filename: str = "x.png",
           headers: dict[str, str] | None = None, **form: Any) -> TestResponse:
    fields = {"file": (io.BytesIO(make_image() if data is None else data), filename), **form}
    return client.post(path, data=fields, content_type="multipart/form-data", headers=headers)


def raw(client: FlaskClient, data: bytes, path: str = "/predict", content_type: str = "image/png",
        headers: dict[str, str] | None = None) -> TestResponse:
    return client.post(path, data=data, content_type=content_type, headers=headers)


def json_of(response: TestResponse) -> Any:
    assert response.is_json, response.data
    return response.json


def assert_error(response: TestResponse, status: int, code: str) -> None:
    assert response.status_code == status, response.data
    body = json_of(response)
    assert body == {"error": {"code": code, "message": body["error"]["message"]}} and body["error"]["message"]


def metrics_text(client: FlaskClient) -> str:
    return client.get("/metrics").get_data(as_text=True)


PNG, JPEG, WEBP = make_image(), make_image("JPEG"), make_image("WEBP")


@pytest.mark.parametrize(("batch", "post", "image", "top_k", "seconds"), [
    (False, lambda c: upload(c, JPEG, top_k="3"), JPEG, 3, 7.0),  # RESULT_TIMEOUT
    (True, lambda c: upload(c, JPEG, top_k="3"), JPEG, 3, 7.0),
    (False, lambda c: raw(c, WEBP, "/predict?top_k=2&timeout=2.5", "image/webp"), WEBP, 2, 2.5),
    # Multipart: top_k from the query when the form has none.
    (False, lambda c: upload(c, PNG, "/predict?top_k=7", headers={"Request-Timeout": "2.5"}), PNG, 7, 2.5),
    (False, lambda c: raw(c, PNG, headers={"X-Request-Timeout": "1.5"}), PNG, 5, 1.5),
    (False, lambda c: raw(c, PNG, "/predict?timeout=9999"), PNG, 5, 7.0)])  # never past RESULT_TIMEOUT
def test_predict_sends_the_modes_task_within_the_clients_deadline_and_returns_the_contract_body(
        serve: Serve, batch: bool, post: Any, image: bytes, top_k: int, seconds: float) -> None:
    queue = serve(USE_BATCH_PROCESSING=batch)
    queue.reply = lambda task_id: success_meta(task_id, top_k, started_at=queue.sent[0]["sent_at"] + 0.25)
    before = time.time()
    body = json_of(post(queue.client))
    [sent], [(task_id, waited)] = queue.sent, queue.waited
    assert (sent["name"], sent["image"], sent["top_k"], sent["queue"]) == (
        CLASSIFY_BATCH_TASK if batch else CLASSIFY_TASK, image, top_k, "inference")
    assert 0 < waited <= seconds <= sent["expires"].timestamp() - before
    assert sent["expires"].timestamp() <= sent["sent_at"] + seconds
    assert set(body) == CONTRACT_KEYS and body["task_id"] == sent["task_id"] == task_id
    assert body["prediction"] == "label 0" and len(body["predictions"]) == top_k
    timings = body["timings_ms"]
    assert set(timings) == {"queue", "inference", "total"} and timings["inference"] == 12.5
    assert 250 <= timings["queue"] <= 300 and timings["total"] >= 0  # queue: the worker's start - the send


def test_async_returns_202_recorded_and_expiring_at_its_ttl(serve: Serve) -> None:
    queue = serve(ASYNC_RESULT_TTL=300.0, RESULT_EXPIRES=3600)
    before = time.time()
    response = upload(queue.client, path="/predict?async=true")
    assert response.status_code == 202
    [sent] = queue.sent
    task_id = sent["task_id"]
    assert response.json == {"task_id": task_id, "status_url": f"/tasks/{task_id}"}
    assert response.headers["Location"].endswith(f"/tasks/{task_id}")
    assert queue.waited == [] and sent["queue"] == "inference.async"
    assert before + 300.0 <= sent["expires"].timestamp() <= sent["sent_at"] + 300.0
    owner, ttl = queue.accepted[task_id]
    assert owner == "" and 3600 + 299 < ttl <= 3600 + 300


@pytest.mark.parametrize(("post", "status", "code"), [
    # One request per refusal: test_webapp_uploads tries the checks and parsers on every other kind.
    (lambda c: upload(c, b"plain text, not a cat", filename="cat.jpg"), 415, "unsupported_media_type"),
    (lambda c: raw(c, b"GET / HTTP/1.1", content_type="image/jpeg"), 415, "unsupported_media_type"),
    (lambda c: upload(c, make_image("PNG")[:20]), 400, "invalid_image"),
    (lambda c: upload(c, png_header(8000, 6000)), 400, "image_too_large"),
    (lambda c: upload(c, b""), 400, "missing_image"),
    (lambda c: c.post("/predict", data={"image": (io.BytesIO(make_image()), "a.png")},
                      content_type="multipart/form-data"), 400, "missing_image"),
    (lambda c: raw(c, b"\0" * (2 * 1024 * 1024)), 413, "payload_too_large"),  # from Content-Length
    # Within the multipart slack of MAX_CONTENT_LENGTH, still over MAX_UPLOAD_MB.
    (lambda c: upload(c, make_image("BMP", size=(600, 600))), 413, "payload_too_large"),
    (lambda c: upload(c, top_k="1001"), 400, "invalid_parameter"),
    (lambda c: raw(c, PNG, "/predict?top_k=2.5"), 400, "invalid_parameter"),
    (lambda c: upload(c, path="/predict?timeout=soon"), 400, "invalid_parameter"),
    (lambda c: raw(c, PNG, headers={"Request-Timeout": "inf"}), 400, "invalid_parameter"),
], ids=["text-as-jpg", "text-as-image-type", "truncated-png", "over-pixels", "empty", "no-file-field",
        "oversize-body", "file-over-limit", "form-top-k", "query-top-k", "query-timeout", "header-timeout"])
def test_bad_requests_are_refused_unsent(queue: FakeQueue, post: Any, status: int, code: str) -> None:
    assert_error(post(queue.client), status, code)
    assert queue.sent == []


@pytest.mark.parametrize(("error", "code"), [
    (OperationalError("Error 111 connecting"), "broker_unavailable"),
    (RedisConnectionError("refused"), "broker_unavailable"),
    (ConnectionRefusedError(111, "refused"), "broker_unavailable"),
    # Redis under maxmemory + noeviction, wrapped as kombu wraps it.
    (OperationalError("OOM command not allowed when used memory > 'maxmemory'."), "overloaded")])
@pytest.mark.parametrize("query", ["", "?async=true"])
def test_a_failed_send_is_503_with_retry_after(monkeypatch: pytest.MonkeyPatch, error: Exception, code: str,
                                               query: str) -> None:
    """The real ``Dispatcher.send``; only Celery's ``send_task`` fails."""
    app, accepted = make_app(), FakeAccepted()
    monkeypatch.setattr(app.extensions["dispatcher"], "accepted", accepted)
    monkeypatch.setattr(app.extensions["celery"], "send_task", Mock(side_effect=error))
    response = upload(app.test_client(), path=f"/predict{query}")
    assert_error(response, 503, code)
    assert int(response.headers["Retry-After"]) > 0
    assert accepted == {}  # a refused async task leaves no record


def test_recording_an_async_task_out_of_memory_is_503(queue: FakeQueue,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queue.accepted, "record", Mock(side_effect=OutOfMemoryError("OOM command")))
    assert_error(upload(queue.client, path="/predict?async=true"), 503, "overloaded")
    assert queue.sent == []
    assert 'webapp_rejected_requests_total{model="efficientnet_lite0",reason="out_of_memory"} 1.0' in \
        metrics_text(queue.client)


@pytest.mark.parametrize(("meta", "status", "code", "message"), [
    ({"status": "REVOKED", "result": None}, 504, "expired", "expired"),
    ({"status": "STARTED", "result": None}, 502, "worker_error", "STARTED"),
    ({"status": "FAILURE", "result": "not a dict"}, 502, "worker_error", "error"),
    (failure("RuntimeError", "CUDA out of memory"), 502, "worker_error", "RuntimeError: CUDA out of memory"),
    *((failure(exc_type, "bad input"), STATUS[code], code, "bad input")
      for exc_type, code in WIRE_ERROR_CODES.items()),
    *((failure(exc_type), wire.status, wire.code, wire.message) for exc_type, wire in WIRE_ERRORS.items())])
def test_worker_outcomes_become_errors_waited_for_or_polled(queue: FakeQueue, meta: dict[str, Any],
                                                            status: int, code: str, message: str) -> None:
    queue.reply = lambda task_id: meta
    response = upload(queue.client)
    assert_error(response, status, code)
    assert message in json_of(response)["error"]["message"]
    queue.stored["t2"] = meta
    body = json_of(queue.client.get("/tasks/t2"))
    ready = meta["status"] != "STARTED"  # STARTED: not ready yet, so no error
    assert (body["status"], body.get("error", {}).get("code"), "result" in body) == (
        meta["status"], code if ready else None, False)


def test_task_status(queue: FakeQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    queue.stored["t1"] = success_meta("t1")
    body = json_of(queue.client.get("/tasks/t1"))
    assert body["status"] == "SUCCESS" and body["result"]["prediction"] == "label 0" and "error" not in body
    # The result store is down (Retry-After as on any broker_unavailable: test_a_failed_send_...).
    monkeypatch.setattr(queue.accepted, "owner", Mock(side_effect=RedisConnectionError("refused")))
    assert_error(queue.client.get("/tasks/t3"), 503, "broker_unavailable")


def test_routing_errors_are_json_and_metrics_can_be_taken_off_the_public_port(queue: FakeQueue) -> None:
    assert_error(queue.client.get("/no/such/page"), 404, "not_found")
    response = queue.client.get("/predict")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"]
    assert_error(make_app(METRICS_PUBLIC=False).test_client().get("/metrics"), 404, "not_found")


def set_queue(queue: FakeQueue, monkeypatch: pytest.MonkeyPatch, kind: str, limit: int, length: int) -> str:
    """Give the default model's ``kind`` queue a fixed length and limit; return its name."""
    bounded = queue.dispatcher.models.default_model.queues[kind]
    monkeypatch.setattr(bounded, "limit", limit)
    monkeypatch.setattr(bounded.length, "get", lambda: length)
    return str(bounded.name)


@pytest.mark.parametrize(("query", "kind"), [("", "sync"), ("?async=true", "async")])
def test_a_full_queue_is_503_before_the_upload_is_read(queue: FakeQueue, monkeypatch: pytest.MonkeyPatch,
                                                       query: str, kind: str) -> None:
    name = set_queue(queue, monkeypatch, kind, limit=10, length=10)
    response = upload(queue.client, path=f"/predict{query}")
    assert_error(response, 503, "overloaded")
    assert int(response.headers["Retry-After"]) > 0
    # Not an image at all: with room it would be 415; full, nobody looks at it.
    assert_error(raw(queue.client, b"plain text", f"/predict{query}"), 503, "overloaded")
    assert queue.sent == [] and queue.accepted == {}
    text = metrics_text(queue.client)
    assert 'webapp_rejected_requests_total{model="efficientnet_lite0",reason="queue_full"} 2.0' in text
    assert f'webapp_queue_length{{model="efficientnet_lite0",queue="{name}"}} 10.0' in text


@pytest.mark.parametrize(("query", "status"), [("?async=true", 503), ("?timeout=soon", 400), ("", 415)])
def test_an_early_answer_reads_the_rest_of_the_upload_first(queue: FakeQueue, monkeypatch: pytest.MonkeyPatch,
                                                            query: str, status: int) -> None:
    """Else gunicorn closes the connection with the body unread: a reset, which nginx answers 502."""
    set_queue(queue, monkeypatch, "async", limit=1, length=1)
    body = io.BytesIO(b"\0" * 300_000)
    response = queue.client.post(f"/predict{query}", input_stream=body, content_length=300_000,
                                 content_type="image/jpeg")
    assert response.status_code == status and body.tell() == 300_000


def test_full_waiting_slots_answer_503_at_once(serve: Serve) -> None:
    queue, refused = serve(MAX_WAITING_REQUESTS=1), []

    def reply(task_id: str) -> dict[str, Any]:
        refused.append(upload(queue.client))  # while this request waits, every slot is taken
        return success_meta(task_id)

    queue.reply = reply
    assert upload(queue.client).status_code == 200
    assert_error(refused[0], 503, "overloaded")
    assert "Retry-After" in refused[0].headers and len(queue.sent) == 1
    assert queue.dispatcher.waiting.count() == 0  # the slot is freed (counting: test_webapp_admission)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(serve: Serve) -> FakeQueue:
    return serve(API_KEYS=("key-one", "key-two"))


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": "Basic a2V5LW9uZQ=="},
                                     {"Authorization": "Bearer"}, bearer("key-one x"), bearer("key-")])
def test_keys_on_a_missing_or_wrong_key_is_401(keyed: FakeQueue, headers: dict[str, str]) -> None:
    for response in (raw(keyed.client, PNG, headers=headers), keyed.client.get("/tasks/t1", headers=headers)):
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert keyed.sent == []


def test_keys_on_a_task_answers_only_its_creator_and_the_page_is_off(keyed: FakeQueue) -> None:
    client = keyed.client
    assert raw(client, PNG, headers=bearer("key-two")).status_code == 200
    response = raw(client, PNG, "/predict?async=true", headers=bearer("key-one"))
    assert response.status_code == 202
    status_url, task_id = json_of(response)["status_url"], json_of(response)["task_id"]
    keyed.stored[task_id] = success_meta(task_id)
    assert client.get(status_url, headers=bearer("key-one")).status_code == 200
    assert_error(client.get(status_url, headers=bearer("key-two")), 404, "not_found")
    # A finished task nobody recorded (e.g. a sync one) is nobody's to read.
    keyed.stored["other"] = success_meta("other")
    assert_error(client.get("/tasks/other", headers=bearer("key-one")), 404, "not_found")
    sent = len(keyed.sent)  # and the page is off: a plain form cannot hold a key safely
    assert client.get("/").status_code == 404
    assert upload(client, path="/", headers=bearer("key-one")).status_code == 404 and len(keyed.sent) == sent


def test_the_page_is_a_plain_upload_form_of_the_servable_models_rendering_the_preview_and_top_5(
        served: FakeQueue) -> None:
    response = served.client.get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert 'enctype="multipart/form-data"' in html and 'method="post"' in html
    assert 'name="file"' in html and 'action="/"' in html and "up to 1 MB" in html
    assert '<select id="model" name="model">' in html
    assert '<option value="lite"' in html and '<option value="pets"' in html and "broken" not in html
    for name in ("style.css", "app.js"):
        asset = served.client.get(f"/static/{name}")
        assert asset.status_code == 200
        asset.close()
    served.reply = lambda task_id: success_meta(task_id, top_k=10)
    response = upload(served.client, JPEG, path="/", filename="photo.jpg")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert f"data:image/jpeg;base64,{base64.b64encode(JPEG).decode()}" in html
    assert all(f"label {i}<" in html for i in range(5)) and "label 5<" not in html
    assert upload(served.client, path="/", model="pets").status_code == 200
    assert [(sent["name"], sent["queue"], sent["top_k"]) for sent in served.sent] == [
        (CLASSIFY_TASK, "inference", 5), (CLASSIFY_BATCH_TASK, "inference.pets", 3)]


@pytest.mark.parametrize(("data", "status", "words"), [(b"not an image at all", 415, "JPEG, PNG"),
                                                       (b"\0" * (2 * 1024 * 1024), 413, "capacity limit")])
def test_the_page_renders_errors_readably(queue: FakeQueue, data: bytes, status: int, words: str) -> None:
    response = upload(queue.client, data, path="/", filename="cat.jpg")
    assert response.status_code == status and response.mimetype == "text/html"
    assert 'role="alert"' in response.get_data(as_text=True) and words in response.get_data(as_text=True)
    assert queue.sent == []


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    pets = ('description = "three pets"\n[batching]\nenabled = true\nbatch_size = 8\n'
            "[preprocess]\ninput_size = 96\n")
    for name, labels, toml in (("lite", 1000, ""), ("pets", 3, pets), ("broken", 3, "[preprocess\n")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.pt2").write_bytes(b"never read by the web app")
        (folder / "labels.txt").write_text("".join(f"class {i}\n" for i in range(labels)))
        (folder / "model.toml").write_text(toml)
    return tmp_path


@pytest.fixture
def served(repository: Path, serve: Serve) -> FakeQueue:
    return serve(MODEL_REPOSITORY=str(repository), DEFAULT_MODEL="lite")


def test_each_model_has_its_queue_mode_and_top_k(served: FakeQueue) -> None:
    client = served.client
    assert upload(client).status_code == 200
    assert upload(client, path="/models/pets/predict", top_k="2").status_code == 200
    assert upload(client, path="/models/pets/predict?async=true").status_code == 202
    assert upload(client, path="/models/pets/predict").status_code == 200  # DEFAULT_TOP_K 5 becomes 3
    assert_error(upload(client, path="/models/pets/predict", top_k="4"), 400, "invalid_parameter")
    assert [(sent["name"], sent["queue"], sent["top_k"]) for sent in served.sent] == [
        (CLASSIFY_TASK, "inference", 5), (CLASSIFY_BATCH_TASK, "inference.pets", 2),
        (CLASSIFY_BATCH_TASK, "inference.pets.async", 3), (CLASSIFY_BATCH_TASK, "inference.pets", 3)]
    assert upload(client, path="/models/nope/predict").status_code == 404
    text = metrics_text(client)  # every request metric names its model; an unknown name is no label value
    route = 'route="/models/<name>/predict"'
    assert f'webapp_http_requests_total{{method="POST",model="pets",{route},status="200"}} 2.0' in text
    assert f'webapp_http_requests_total{{method="POST",model="",{route},status="404"}} 1.0' in text


def test_an_unknown_model_is_404_a_broken_one_503_and_without_a_default_a_request_names_one(
        served: FakeQueue, repository: Path, serve: Serve) -> None:
    client = served.client
    assert_error(upload(client, path="/models/nope/predict"), 404, "model_not_found")
    assert_error(client.get("/models/nope"), 404, "model_not_found")
    for name in ("..%2Flite", "lite%2F..%2F..%2Fetc", "%2E%2E"):  # a path never reaches a file
        assert upload(client, path=f"/models/{name}/predict").status_code == 404
    response = upload(client, path="/models/broken/predict")
    assert_error(response, 503, "model_unavailable")
    assert int(response.headers["Retry-After"]) > 0
    assert "not valid TOML" in json_of(response)["error"]["message"]
    assert served.sent == []
    queue = serve(MODEL_REPOSITORY=str(repository))
    assert_error(upload(queue.client), 404, "model_not_found")
    assert upload(queue.client, path="/models/lite/predict").status_code == 200
    assert queue.sent[0]["queue"] == "inference.lite"
    with pytest.raises(ValueError, match="DEFAULT_MODEL=gone is not a model"):
        make_app(MODEL_REPOSITORY=str(repository), DEFAULT_MODEL="gone")


def test_models_and_the_open_inference_protocol_describe_every_model_ready_or_not(
        served: FakeQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    client = served.client
    body = json_of(client.get("/models"))
    assert body["default"] == "lite"
    by_name = {model["name"]: model for model in body["models"]}
    assert sorted(by_name) == ["broken", "lite", "pets"]
    pets = by_name["pets"]
    assert (pets["ready"], pets["labels"], pets["input_size"], pets["version"], pets["description"]) == (
        True, 3, 96, "1", "three pets")
    assert pets["batching"] == {"enabled": True, "batch_size": 8} and pets["queue"] == "inference.pets"
    assert not by_name["broken"]["ready"] and "model.toml is not valid TOML" in by_name["broken"]["reason"]
    assert json_of(client.get("/models/pets")) == pets
    # The same through the Open Inference Protocol (v2).
    served.dispatcher.readiness.cache_seconds = 0
    assert json_of(client.get("/v2/health/live")) == {"live": True}
    assert json_of(client.get("/v2/health/ready")) == {"ready": True}
    meta = json_of(client.get("/v2/models/pets"))
    assert meta["name"] == "pets" and meta["versions"] == ["1"] and meta["platform"] == "pytorch_export"
    assert meta["outputs"][0]["shape"] == [-1, 3]
    assert client.get("/v2/models/pets/ready").status_code == 200
    broken = client.get("/v2/models/broken/ready")
    assert broken.status_code == 503 and json_of(broken) == {"name": "broken", "ready": False}
    monkeypatch.setattr(operations, "ping_broker", Mock(side_effect=ConnectionRefusedError("refused")))
    assert client.get("/v2/health/ready").status_code == 503


def test_a_model_without_a_live_worker_refuses_waiting_clients_at_once(
        served: FakeQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    client = served.client
    monkeypatch.setattr(operations, "worker_queues", lambda celery: [["inference", "inference.async"]])
    monkeypatch.setattr(operations, "model_failures",
                        lambda celery, names: {"pets": "model.pt2 has 4 outputs"})
    served.dispatcher.readiness.check()
    response = upload(client, path="/models/pets/predict")
    assert_error(response, 503, "model_unavailable")  # with Retry-After, as a broken one's (above)
    assert "its workers failed to load it: model.pt2 has 4 outputs" in json_of(response)["error"]["message"]
    # Queued, within its bound.
    assert upload(client, path="/models/pets/predict?async=true").status_code == 202
    assert upload(client).status_code == 200
    assert [sent["queue"] for sent in served.sent] == ["inference.pets.async", "inference"]
    pets = json_of(client.get("/models/pets"))
    assert (pets["ready"], pets["workers"]) == (False, 0) and "4 outputs" in pets["reason"]
    lite = json_of(client.get("/models/lite"))
    assert (lite["ready"], lite["workers"]) == (True, 1) and "reason" not in lite
    ready = client.get("/readyz")
    assert ready.status_code == 200 and json_of(ready)["models_without_workers"] == ["broken", "pets"]


def test_readyz_follows_the_default_model(served: FakeQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(operations, "worker_queues",
                        lambda celery: [["inference.pets", "inference.pets.async"]])
    response = served.client.get("/readyz")
    assert response.status_code == 503
    assert json_of(response) == {"status": "unavailable", "models_without_workers": ["broken", "lite"],
                                 "reason": "the default model lite cannot serve: no live worker consumes its "
                                           "queue inference"}
