"""``/openapi.json`` matches the routes; schemathesis and a Hypothesis fuzz find no 5xx (the broker is
faked at the seams and always succeeds: every 5xx would be the web app's own bug)."""
from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import webapp
from common.contract import ACCEPTED_FORMATS, MAX_TOP_K, MIN_TOP_K
from tests.support.images import make_image
from tests.unit.test_webapp_routes import CELERY, FakeQueue
from webapp import create_app
from webapp.uploads import MIN_TIMEOUT, TIMEOUT_HEADERS

SPEC = json.loads((Path(webapp.__file__).parent / "static" / "openapi.json").read_text())

_SETTINGS = {"TESTING": True, "RESULT_TIMEOUT": 5.0, "MAX_UPLOAD_MB": 1.0, "CELERY": CELERY}

#: Module level: schemathesis reads the document from the app when collecting.
APP = create_app(_SETTINGS)
schema = schemathesis.openapi.from_wsgi("/openapi.json", APP)


@pytest.fixture
def offline(fuzz_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both apps' seams faked: every wait succeeds, readiness pings answer at once."""
    for app in (APP, fuzz_app):
        FakeQueue().install(app, monkeypatch)


def test_document_lists_every_route_and_nothing_else() -> None:
    documented = {(path, method) for path, item in SPEC["paths"].items() for method in item}
    assert documented == {(rule.rule.replace("<", "{").replace(">", "}"), method.lower())
                          for rule in APP.url_map.iter_rules() if rule.endpoint != "static"
                          for method in set(rule.methods or ()) - {"HEAD", "OPTIONS"}}


def test_document_is_served_and_states_the_contracts_limits() -> None:
    response = APP.test_client().get("/openapi.json")
    assert response.status_code == 200 and response.json == SPEC
    for path in ("/predict", "/models/{name}/predict"):
        parameters = {p["name"]: p["schema"] for p in SPEC["paths"][path]["post"]["parameters"]}
        assert parameters["top_k"] == {"type": "integer", "minimum": MIN_TOP_K, "maximum": MAX_TOP_K}
        assert {parameters[name]["minimum"] for name in ("timeout", *TIMEOUT_HEADERS)} == {MIN_TIMEOUT}
    assert all(fmt in SPEC["info"]["description"] for fmt in ACCEPTED_FORMATS)


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_for_any_documented_request(case: Any, offline: None) -> None:
    response = case.call(app=APP)
    assert response.status_code < 500, (case.path, case.method, response.status_code, response.text[:300])


_SEEDS = [make_image(fmt, size=(24, 16)) for fmt in ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")]


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid image with bytes overwritten, cut, or extended: broken headers, chunks, EXIF blocks."""
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        at = draw(st.integers(0, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(data)))
    return bytes(data[:cut]) + draw(st.binary(max_size=64))


@pytest.fixture(scope="module")
def fuzz_app() -> Flask:
    return create_app(_SETTINGS)


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


@pytest.mark.parametrize("error", [SyntaxError("bad tag"), KeyError(274), struct.error("need 4 bytes"),
                                   RecursionError(), ZeroDivisionError()])
def test_any_decoder_exception_in_the_header_check_is_400(fuzz_app: Flask, offline: None,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          error: Exception) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise error

    monkeypatch.setattr(Image, "open", broken)
    response = fuzz_app.test_client().post("/predict", data=make_image("JPEG"), content_type="image/jpeg")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_image"

