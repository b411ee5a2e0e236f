"""The HTTP API over a real gunicorn, worker and Redis."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.support.photos import CAT_CLASSES, distinct_photos, encode, photo
from tests.support.stack import Stack


def fetch(url: str, body: bytes | None = None, content_type: str = "") -> tuple[int, dict[str, Any]]:
    """POST ``body``, or GET without one; the status and the JSON body."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def upload(url: str, image: bytes, filename: str = "photo.jpg", **fields: str) -> tuple[int, dict[str, Any]]:
    boundary = "----e2e-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + image + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return fetch(url, body, f"multipart/form-data; boundary={boundary}")


def answered(url: str, image: bytes) -> tuple[int, dict[str, Any]]:
    """Upload as a client that honours a refusal: latency admission may refuse part of a burst, with a
    ``Retry-After`` of at least 1 s."""
    while (reply := upload(url, image))[0] == 503 and reply[1]["error"]["code"] == "overloaded":
        time.sleep(1)
    return reply


def test_a_cat_photo_comes_back_a_cat(stack: Stack) -> None:
    status, body = upload(f"{stack.url}/predict", encode(photo("chelsea")))
    assert status == 200, body
    assert body["predictions"][0]["class_id"] in CAT_CLASSES
    assert body["prediction"] == body["predictions"][0]["label"] and len(body["predictions"]) == 5
    assert body["mode"] == "individual" and body["batch_size"] == 1
    assert set(body["timings_ms"]) == {"queue", "inference", "total"}


def test_async_upload_then_poll(stack: Stack) -> None:
    status, body = upload(f"{stack.url}/predict?async=true", encode(photo("chelsea")))
    assert status == 202 and body["status_url"] == f"/tasks/{body['task_id']}"
    while True:  # each GET is a real round trip; the result arrives within the test timeout
        status, polled = fetch(stack.url + body["status_url"])
        if polled["status"] not in {"PENDING", "STARTED"}:
            break
    assert status == 200 and polled["status"] == "SUCCESS"
    assert polled["result"]["predictions"][0]["class_id"] in CAT_CLASSES


def test_48_concurrent_requests_each_get_their_own_answer(stack: Stack) -> None:
    # 48: under the web app's default waiting limit (WEB_THREADS - 4), which would refuse the rest.
    images = distinct_photos(48)
    alone = [upload(f"{stack.url}/predict", image)[1] for image in images[:6]]
    with ThreadPoolExecutor(48) as pool:
        together = list(pool.map(lambda image: answered(f"{stack.url}/predict", image), images))
    assert all(status == 200 for status, _ in together), [b for s, b in together if s != 200][:3]
    ids = [body["task_id"] for _, body in together]
    assert len(set(ids)) == 48
    # The first six are the uncropped photos: each must carry its own photo's answer.
    for (_, mine), reference in zip(together[:6], alone[:6], strict=True):
        assert mine["predictions"][0]["class_id"] == reference["predictions"][0]["class_id"]
        assert mine["score"] == pytest.approx(reference["score"], abs=1e-4)


def test_batch_mode_serves_the_same_answers_in_real_batches(stack: Stack, batch_stack: Stack) -> None:
    images = distinct_photos(12)
    alone = [upload(f"{stack.url}/predict", image)[1] for image in images]
    with ThreadPoolExecutor(12) as pool:
        batched = [body for _, body in pool.map(lambda image: answered(f"{batch_stack.url}/predict", image),
                                                images)]
    for mine, reference in zip(batched, alone, strict=True):
        assert mine["mode"] == "batch"
        assert mine["predictions"][0]["class_id"] == reference["predictions"][0]["class_id"]
        assert mine["score"] == pytest.approx(reference["score"], abs=1e-3)
    assert max(body["batch_size"] for body in batched) > 1


def test_health_ready_and_metrics(stack: Stack) -> None:
    assert fetch(f"{stack.url}/healthz") == (200, {"status": "ok"}) and fetch(f"{stack.url}/readyz")[0] == 200
    with urllib.request.urlopen(f"{stack.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert "predict" in text and "_bucket" in text
