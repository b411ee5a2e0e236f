"""Several models on one web app: routing by name, the model routes and the OIP probes,
with the broker replaced at the seam (``webapp.dispatch.send``, ``ResultWaiter.wait``)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from common.contract import CLASSIFY_BATCH_TASK, CLASSIFY_TASK
from tests.support.images import make_image
from tests.unit.test_webapp_api import FakeQueue, assert_error, fake_seam, json_of
from webapp import create_app, health

pytestmark = pytest.mark.unit


def write_model(root: Path, name: str, labels: int, toml: str = "") -> None:
    folder = root / name
    folder.mkdir()
    (folder / "model.pt2").write_bytes(b"never read by the web app")
    (folder / "labels.txt").write_text("".join(f"class {i}\n" for i in range(labels)))
    (folder / "model.toml").write_text(toml)


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    write_model(tmp_path, "lite", 1000)
    write_model(tmp_path, "pets", 3, "description = \"three pets\"\n[batching]\nenabled = true\n"
                "batch_size = 8\n[preprocess]\ninput_size = 96\n")
    write_model(tmp_path, "broken", 3, "[preprocess\n")
    return tmp_path


def make_app(repository: Path, **config: Any) -> Flask:
    return create_app({
        "TESTING": True, "USE_BATCH_PROCESSING": False, "MODEL_REPOSITORY": str(repository),
        "CELERY": {"broker_url": "memory://", "result_backend": "redis://127.0.0.1:6379/15"}, **config})


@pytest.fixture
def app(repository: Path) -> Flask:
    return make_app(repository, DEFAULT_MODEL="lite")


@pytest.fixture
def queue(app: Flask, monkeypatch: pytest.MonkeyPatch) -> FakeQueue:
    return fake_seam(app, monkeypatch)


@pytest.fixture
def client(app: Flask, queue: FakeQueue) -> FlaskClient:
    return app.test_client()


def upload(client: FlaskClient, path: str, **fields: Any) -> Any:
    return client.post(path, data={"file": (io.BytesIO(make_image()), "x.png"), **fields},
                       content_type="multipart/form-data")


def test_each_model_has_its_queue_and_mode(client: FlaskClient, queue: FakeQueue) -> None:
    assert upload(client, "/predict").status_code == 200
    assert upload(client, "/models/pets/predict", top_k="2").status_code == 200
    assert upload(client, "/models/pets/predict?async=true").status_code == 202
    assert [(sent["name"], sent["queue"]) for sent in queue.sent] == [
        (CLASSIFY_TASK, "inference"), (CLASSIFY_BATCH_TASK, "inference.pets"),
        (CLASSIFY_BATCH_TASK, "inference.pets.async")]


def test_top_k_is_bounded_by_the_models_labels(client: FlaskClient, queue: FakeQueue) -> None:
    assert_error(upload(client, "/models/pets/predict", top_k="4"), 400, "invalid_parameter")
    assert upload(client, "/models/pets/predict").status_code == 200  # DEFAULT_TOP_K 5 becomes 3
    assert [sent["top_k"] for sent in queue.sent] == [3]


def test_an_unknown_model_is_404_and_a_broken_one_503(client: FlaskClient, queue: FakeQueue) -> None:
    assert_error(upload(client, "/models/nope/predict"), 404, "model_not_found")
    assert_error(client.get("/models/nope"), 404, "model_not_found")
    response = upload(client, "/models/broken/predict")
    assert_error(response, 503, "model_unavailable")
    assert int(response.headers["Retry-After"]) > 0
    assert "not valid TOML" in json_of(response)["error"]["message"]
    assert queue.sent == []


def test_a_path_in_the_name_never_reaches_a_file(client: FlaskClient, queue: FakeQueue) -> None:
    for name in ("..%2Flite", "lite%2F..%2F..%2Fetc", "%2E%2E"):
        assert upload(client, f"/models/{name}/predict").status_code == 404
    assert queue.sent == []


def test_models_lists_every_model_ready_or_not(client: FlaskClient) -> None:
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


def test_several_models_without_a_default(repository: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(repository)
    fake = fake_seam(app, monkeypatch)
    client = app.test_client()
    assert_error(upload(client, "/predict"), 404, "model_not_found")
    assert upload(client, "/models/lite/predict").status_code == 200
    assert fake.sent[0]["queue"] == "inference.lite"


def test_a_default_model_that_is_not_there_stops_the_app(repository: Path) -> None:
    with pytest.raises(ValueError, match="DEFAULT_MODEL=gone is not a model"):
        make_app(repository, DEFAULT_MODEL="gone")


def refuse(celery: Any) -> None:
    raise ConnectionRefusedError("Connection refused")


def serve_only(monkeypatch: pytest.MonkeyPatch, *queues: str) -> None:
    """The workers consume only ``queues``."""
    monkeypatch.setattr(health, "worker_queues", lambda celery: [list(queues)])


def test_a_model_without_a_live_worker_refuses_waiting_clients_at_once(
        client: FlaskClient, app: Flask, queue: FakeQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    serve_only(monkeypatch, "inference", "inference.async")
    monkeypatch.setattr(health, "model_failures", lambda celery, names: {"pets": "model.pt2 has 4 outputs"})
    app.extensions["readiness"].check()
    response = upload(client, "/models/pets/predict")
    assert_error(response, 503, "model_unavailable")
    assert int(response.headers["Retry-After"]) > 0
    assert "its workers failed to load it: model.pt2 has 4 outputs" in json_of(response)["error"]["message"]
    assert upload(client, "/models/pets/predict?async=true").status_code == 202  # queued, within its bound
    assert upload(client, "/predict").status_code == 200
    assert [sent["queue"] for sent in queue.sent] == ["inference.pets.async", "inference"]
    pets = json_of(client.get("/models/pets"))
    assert (pets["ready"], pets["workers"]) == (False, 0) and "4 outputs" in pets["reason"]
    lite = json_of(client.get("/models/lite"))
    assert (lite["ready"], lite["workers"]) == (True, 1) and "reason" not in lite
    ready = client.get("/readyz")
    assert ready.status_code == 200 and json_of(ready)["models_without_workers"] == ["broken", "pets"]
    assert client.get("/v2/models/pets/ready").status_code == 503


def test_readyz_follows_the_default_model(app: Flask, queue: FakeQueue,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    serve_only(monkeypatch, "inference.pets", "inference.pets.async")
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert json_of(response)["reason"] == ("the default model lite cannot serve: no live worker consumes its "
                                           "queue inference")
    assert json_of(response)["models_without_workers"] == ["broken", "lite"]


def test_open_inference_protocol_probes(client: FlaskClient, app: Flask,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    app.extensions["readiness"].cache_seconds = 0
    assert json_of(client.get("/v2/health/live")) == {"live": True}
    assert json_of(client.get("/v2/health/ready")) == {"ready": True}
    meta = json_of(client.get("/v2/models/pets"))
    assert meta["name"] == "pets" and meta["versions"] == ["1"] and meta["platform"] == "pytorch_export"
    assert meta["outputs"][0]["shape"] == [-1, 3]
    assert client.get("/v2/models/pets/ready").status_code == 200
    broken = client.get("/v2/models/broken/ready")
    assert broken.status_code == 503 and json_of(broken) == {"name": "broken", "ready": False}
    assert client.get("/v2/models/nope/ready").status_code == 404
    monkeypatch.setattr(health, "ping_broker", refuse)
    assert client.get("/v2/health/ready").status_code == 503


def test_the_page_offers_the_servable_models(client: FlaskClient, queue: FakeQueue) -> None:
    page = client.get("/").get_data(as_text=True)
    assert '<select id="model" name="model">' in page
    assert '<option value="lite"' in page and '<option value="pets"' in page and "broken" not in page
    assert upload(client, "/", model="pets").status_code == 200
    assert queue.sent[0]["queue"] == "inference.pets" and queue.sent[0]["top_k"] == 3


def test_every_request_metric_names_its_model(client: FlaskClient, queue: FakeQueue) -> None:
    assert upload(client, "/models/pets/predict").status_code == 200
    assert upload(client, "/models/nope/predict").status_code == 404
    text = client.get("/metrics").get_data(as_text=True)
    assert ('webapp_http_requests_total{method="POST",model="pets",route="/models/<name>/predict",'
            'status="200"} 1.0') in text
    # An unknown name is no label value.
    assert ('webapp_http_requests_total{method="POST",model="",route="/models/<name>/predict",'
            'status="404"} 1.0') in text
