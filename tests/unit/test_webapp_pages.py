"""The HTML page: a plain form post renders the preview and top-5 server-side."""
from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.test import TestResponse

from common.contract import CLASSIFY_TASK
from webapp import create_app, dispatch


def make_image(fmt: str = "PNG", size: tuple[int, int] = (16, 12)) -> bytes:
    """A small synthetic image saved by Pillow."""
    buf = io.BytesIO()
    Image.new("RGB", size, "orange").save(buf, fmt)
    return buf.getvalue()


@pytest.fixture
def app() -> Iterator[Flask]:
    yield create_app({
        "TESTING": True,
        "MAX_UPLOAD_MB": 1.0,
        "CELERY": {"broker_url": "memory://", "result_backend": "redis://127.0.0.1:6379/15"},
    })


@pytest.fixture
def sent(app: Flask, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace the seam: record sends, answer every wait with ten predictions."""
    calls: list[dict[str, Any]] = []

    def send(celery: Any, name: str, image: bytes, top_k: int, **options: Any) -> None:
        calls.append({"name": name, "top_k": top_k, **options})

    def wait(task_id: str, timeout: float) -> dict[str, Any]:
        predictions = [{"class_id": i, "label": f"class-{i}", "score": 0.9 / (i + 1)} for i in range(10)]
        return {"task_id": task_id, "status": "SUCCESS", "result": {
            "model": "efficientnet_lite0", "prediction": "class-0", "score": 0.9, "predictions": predictions,
            "mode": "batch", "batch_size": 4, "batch_id": "b1", "started_at": time.time(),
            "timings_ms": {"inference": 31.0}}}

    monkeypatch.setattr(dispatch, "send", send)
    monkeypatch.setattr(app.extensions["result_waiter"], "wait", wait)
    return calls


def post_form(client: FlaskClient, data: bytes, filename: str) -> TestResponse:
    return client.post("/", data={"file": (io.BytesIO(data), filename)}, content_type="multipart/form-data")


def test_index_has_a_plain_upload_form(app: Flask) -> None:
    response = app.test_client().get("/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert 'enctype="multipart/form-data"' in html and 'method="post"' in html
    assert 'name="file"' in html and 'action="/"' in html


def test_post_renders_preview_and_top5(app: Flask, sent: list[dict[str, Any]]) -> None:
    image = make_image("JPEG")
    response = post_form(app.test_client(), image, "photo.jpg")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert f"data:image/jpeg;base64,{base64.b64encode(image).decode()}" in html
    assert all(f"class-{i}" in html for i in range(5))
    assert "class-5" not in html
    assert sent[0]["name"] == CLASSIFY_TASK and sent[0]["top_k"] == 5


def test_post_of_text_file_renders_readable_error(app: Flask, sent: list[dict[str, Any]]) -> None:
    response = post_form(app.test_client(), b"not an image at all", "cat.jpg")
    assert response.status_code == 415 and response.mimetype == "text/html"
    assert 'role="alert"' in response.get_data(as_text=True)
    assert "JPEG, PNG" in response.get_data(as_text=True)
    assert sent == []


def test_post_of_oversize_file_renders_413_page(app: Flask, sent: list[dict[str, Any]]) -> None:
    response = post_form(app.test_client(), b"\0" * (2 * 1024 * 1024), "huge.png")
    assert response.status_code == 413 and response.mimetype == "text/html"
    assert sent == []


def test_static_assets_are_served(app: Flask) -> None:
    client = app.test_client()
    for name in ("style.css", "app.js"):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200
        response.close()
