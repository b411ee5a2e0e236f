"""``/openapi.json`` matches the routes; schemathesis and a Hypothesis fuzz find no 5xx.

The broker is replaced at the seams (``dispatch.send``, the waiter, the
accepted-task records, the readiness pings): every 5xx would be the web
app's own bug, since the fake worker always succeeds.
"""
from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.unit.test_webapp_api import FakeAccepted, success_meta
from webapp import create_app, dispatch, health
from webapp.openapi import SPEC

_SETTINGS = {"TESTING": True, "RESULT_TIMEOUT": 5.0, "MAX_UPLOAD_MB": 1.0,
             "CELERY": {"broker_url": "memory://", "result_backend": "redis://127.0.0.1:6379/15"}}


def _faked(app: Flask) -> Flask:
    """Replace the broker seams on ``app``: sends are dropped, every wait succeeds."""
    app.extensions["accepted"] = FakeAccepted()
    app.extensions["result_waiter"].wait = lambda task_id, timeout: success_meta(task_id)
    app.extensions["result_waiter"].fetch = lambda task_id: None
    return app


#: Module level: schemathesis reads the document from the app when collecting.
APP = _faked(create_app(_SETTINGS))
schema = schemathesis.openapi.from_wsgi("/openapi.json", APP)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sends go nowhere; readiness pings answer at once."""
    monkeypatch.setattr(dispatch, "send", lambda *args, **kwargs: None)
    monkeypatch.setattr(health, "ping_broker", lambda celery: None)
    monkeypatch.setattr(health, "worker_queues", lambda celery: [["inference", "inference.async"]])


def _routes(app: Flask) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = rule.rule.replace("<", "{").replace(">", "}")
        methods = set(rule.methods or ()) - {"HEAD", "OPTIONS"}
        routes |= {(path, method.lower()) for method in methods}
    return routes


def test_document_lists_every_route_and_nothing_else() -> None:
    documented = {(path, method) for path, item in SPEC["paths"].items() for method in item}
    assert documented == _routes(create_app(_SETTINGS))


def test_document_is_served() -> None:
    response = APP.test_client().get("/openapi.json")
    assert response.status_code == 200 and response.json == SPEC


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_for_any_documented_request(case: Any, offline: None) -> None:
    response = case.call(app=APP)
    assert response.status_code < 500, (case.path, case.method, response.status_code, response.text[:300])


# -- fuzzing the upload path -------------------------------------------------------

def _image(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 16), "purple").save(buf, fmt)
    return buf.getvalue()


_SEEDS = [_image(fmt) for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")]


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid image with bytes overwritten, cut, or extended: broken headers, chunks, EXIF."""
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=64))


@pytest.fixture(scope="module")
def fuzz_app() -> Iterator[Flask]:
    yield _faked(create_app(_SETTINGS))


@given(body=st.one_of(mutated_images(), st.binary(max_size=2048)),
       top_k=st.one_of(st.none(), st.text(max_size=12)),
       timeout=st.one_of(st.none(), st.text(max_size=12)),
       multipart=st.booleans())
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzzed_uploads_never_get_a_server_error(fuzz_app: Flask, offline: None, body: bytes,
                                                 top_k: str | None, timeout: str | None,
                                                 multipart: bool) -> None:
    query = {k: v for k, v in {"top_k": top_k, "timeout": timeout}.items() if v is not None}
    client = fuzz_app.test_client()
    if multipart:
        response = client.post("/predict", query_string=query, content_type="multipart/form-data",
                               data={"file": (io.BytesIO(body), "x.bin")})
    else:
        response = client.post("/predict", query_string=query, data=body,
                               content_type="application/octet-stream")
    assert response.status_code in {200, 400, 413, 415}, (response.status_code, response.data[:300])
    assert response.is_json


def test_a_malformed_exif_block_is_not_a_server_error(fuzz_app: Flask, offline: None) -> None:
    """A JPEG whose APP1 EXIF segment is garbage: accepted (the worker decides) or 400, never 5xx."""
    jpeg = _image("JPEG")
    exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + b"\xff" * 40
    segment = b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif
    body = jpeg[:2] + segment + jpeg[2:]
    response = fuzz_app.test_client().post("/predict", data=body, content_type="image/jpeg")
    assert response.status_code in {200, 400}, response.data


@pytest.mark.parametrize("error", [SyntaxError("bad tag"), KeyError(274), struct.error("need 4 bytes"),
                                   RecursionError(), ZeroDivisionError()])
def test_any_decoder_exception_in_the_header_check_is_400(fuzz_app: Flask, offline: None,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          error: Exception) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(Image, "open", broken)
    response = fuzz_app.test_client().post("/predict", data=_image("JPEG"), content_type="image/jpeg")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_image"

