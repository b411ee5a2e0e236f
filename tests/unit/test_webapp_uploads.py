"""What a request carries: format sniffing, header-only pixel limits, top_k, the client's deadline, and
the in-memory multipart parser (werkzeug's answer for every body, plain or not)."""
from __future__ import annotations

import io
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.formparser import FormDataParser
from werkzeug.wrappers import Request

from common.contract import ACCEPTED_FORMATS, MAX_TOP_K, MIN_TOP_K
from tests.support.images import make_image, png_header
from webapp.errors import ApiError
from webapp.uploads import InMemoryFormDataParser, inspect_image, parse_top_k, requested_timeout, split_parts

LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_pixels": 40_000_000}


def assert_refused(data: bytes, code: str, max_pixels: int = 40_000_000, max_bytes: int = 1 << 24) -> str:
    with pytest.raises(ApiError) as raised:
        inspect_image(data, max_bytes=max_bytes, max_pixels=max_pixels)
    assert raised.value.code == code
    return raised.value.message


@pytest.mark.parametrize(("fmt", "mode", "save"), [
    ("JPEG", "CMYK", {}), ("JPEG", "RGB", {"progressive": True}), ("PNG", "I;16", {}), ("PNG", "P", {}),
    ("PNG", "RGBA", {}), *((fmt, "RGB", {}) for fmt in ACCEPTED_FORMATS if fmt != "GIF"), ("GIF", "P", {}),
    ("MPO", "RGB", {"save_all": True, "append_images": [Image.new("RGB", (16, 12))]}),  # multi-picture JPEG
    ("GIF", "P", {"save_all": True, "append_images": [Image.new("P", (16, 12), 2)]})])  # animated
def test_accepted_formats(fmt: str, mode: str, save: dict[str, Any]) -> None:
    assert inspect_image(make_image(fmt, mode, **save), **LIMITS) == fmt


@pytest.mark.parametrize("data", [b"hello, I am a cat.jpg", b"%PDF-1.7\n",
                                  b"<svg xmlns='http://www.w3.org/2000/svg'/>", make_image("ICO")],
                         ids=["text", "pdf", "svg", "ico"])
def test_unaccepted_content_is_415(data: bytes) -> None:
    message = assert_refused(data, "unsupported_media_type")
    assert all(fmt in message for fmt in ACCEPTED_FORMATS)


@pytest.mark.parametrize("data", [
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIH", make_image("PNG")[:20], b"\xff\xd8\xff\xe0" + b"garbage" * 4,
    b"GIF89a\x01", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"II*\x00\x08\x00",
], ids=["png-cut-in-ihdr", "png-prefix", "jpeg-garbage", "gif-cut", "webp-cut", "tiff-cut"])
def test_corrupt_header_of_accepted_format_is_invalid(data: bytes) -> None:
    assert_refused(data, "invalid_image")


def test_pixel_and_byte_limits() -> None:
    # 48 Mpx: over our limit, under Pillow's own bomb warning threshold.
    assert "8000x6000" in assert_refused(png_header(8000, 6000), "image_too_large")
    assert_refused(png_header(100_000, 100_000), "image_too_large")  # a decompression bomb
    assert inspect_image(png_header(100, 50), max_bytes=1 << 20, max_pixels=5000) == "PNG"  # inclusive
    assert_refused(png_header(100, 50), "image_too_large", max_pixels=4999)
    data = make_image("BMP", size=(64, 64))
    assert inspect_image(data, max_bytes=len(data), max_pixels=10**6) == "BMP"
    assert_refused(data, "payload_too_large", max_bytes=len(data) - 1)


def test_parse_top_k() -> None:
    assert [parse_top_k(raw, default=5) for raw in (None, "", " 3 ", str(MIN_TOP_K), str(MAX_TOP_K))] == [
        5, 5, 3, MIN_TOP_K, MAX_TOP_K]
    for raw in (str(MIN_TOP_K - 1), str(MAX_TOP_K + 1), "-1", "+3", "2.5", "1e2", "²", "9" * 500, "0x1"):
        with pytest.raises(ApiError, match="top_k must be") as raised:
            parse_top_k(raw, default=5)
        assert raised.value.code == "invalid_parameter"


def request(query: str = "", **headers: str) -> Request:
    return Request.from_values(f"/predict{query}", headers=headers)


def test_requested_timeout() -> None:
    assert [requested_timeout(req) for req in (
        request(), request("?timeout=2.5"), request(**{"Request-Timeout": "4"}),
        request(**{"X-Request-Timeout": " 0.25 "}),
        # The query wins over the headers, Request-Timeout over X-Request-Timeout.
        request("?timeout=1", **{"Request-Timeout": "3"}),
        request(**{"Request-Timeout": "3", "X-Request-Timeout": "2"}))] == [None, 2.5, 4.0, 0.25, 1.0, 3.0]
    for raw in ("0", "0.05", "5e-324", "-2", "", "abc", "nan", "inf", "1e400", "1" * 33):
        with pytest.raises(ApiError, match="timeout"):
            requested_timeout(request(f"?timeout={raw}"))
        with pytest.raises(ApiError, match="X-Request-Timeout"):
            requested_timeout(request(**{"X-Request-Timeout": raw or " "}))


BOUNDARY = "----formdata-abc123"
Parsed = tuple[dict[str, list[str]], dict[str, list[tuple[str | None, str | None, bytes]]]]


def parse(parser_class: type[FormDataParser], body: bytes, boundary: str = BOUNDARY, **limits: Any) -> Parsed:
    """Form and files as plain values (as a Flask request builds them), or the exception's class name."""
    parser = parser_class(silent=False, cls=ImmutableMultiDict, **limits)
    try:
        _, form, files = parser.parse(io.BytesIO(body), "multipart/form-data", len(body),
                                      {"boundary": boundary})
    except Exception as exc:  # the two must fail alike too
        return {"error": [type(exc).__name__]}, {}
    return ({key: form.getlist(key) for key in form},
            {key: [(f.filename, f.content_type, f.read()) for f in files.getlist(key)] for key in files})


def body_of(parts: list[tuple[bytes, bytes]], boundary: str = BOUNDARY, end: bytes = b"--\r\n") -> bytes:
    delimiter = b"--" + boundary.encode()
    chunks = [delimiter + b"\r\n" + headers + b"\r\n\r\n" + content + b"\r\n" for headers, content in parts]
    return b"".join(chunks) + delimiter + end


PHOTO = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n\xff\xd9"
PLAIN = body_of([(b'Content-Disposition: form-data; name="file"; filename="cat.jpg"\r\n'
                  b"Content-Type: image/jpeg", PHOTO),
                 (b'Content-Disposition: form-data; name="top_k"', b"3")])


def test_a_plain_upload_is_split_in_memory_as_werkzeug_reads_it() -> None:
    assert split_parts(PLAIN, BOUNDARY.encode()) is not None  # the fast path, not the fallback
    ours, theirs = parse(InMemoryFormDataParser, PLAIN), parse(FormDataParser, PLAIN)
    assert ours == theirs
    assert ours == ({"top_k": ["3"]}, {"file": [("cat.jpg", "image/jpeg", PHOTO)]})


def test_limits_are_werkzeugs() -> None:
    many = body_of([(b'Content-Disposition: form-data; name="f%d"' % i, b"x") for i in range(5)])
    assert parse(InMemoryFormDataParser, many, max_form_parts=3) == ({"error": ["RequestEntityTooLarge"]}, {})
    big = body_of([(b'Content-Disposition: form-data; name="top_k"', b"9" * 100)])
    too_large: Parsed = ({"error": ["RequestEntityTooLarge"]}, {})
    assert (parse(InMemoryFormDataParser, big, max_form_memory_size=50)
            == parse(FormDataParser, big, max_form_memory_size=50) == too_large)


_names = st.text(st.characters(codec="utf-8", exclude_characters='"\\\r\n'), max_size=8)
_headers = st.one_of(
    st.builds(lambda n: b'Content-Disposition: form-data; name="%s"' % n.encode(), _names),
    st.builds(lambda n, f: b'Content-Disposition: form-data; name="%s"; filename="%s"\r\n'
              b"Content-Type: image/png" % (n.encode(), f.encode()), _names, _names),
    st.binary(max_size=40),  # anything at all
)
_content = st.one_of(st.binary(max_size=64), st.sampled_from(
    [b"\r\n", b"--", b"\r\n--" + BOUNDARY.encode()[:-1], b"\r\n\r\n", b"a: b\r\n\r\nc"]))


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(st.tuples(_headers, _content), max_size=4),
       end=st.sampled_from([b"--\r\n", b"--", b"--epilogue", b"\r\n", b"", b"  --\r\n"]),
       cut=st.one_of(st.none(), st.integers(min_value=0, max_value=400)))
def test_any_body_gets_werkzeugs_answer(parts: list[tuple[bytes, bytes]], end: bytes,
                                        cut: int | None) -> None:
    body = body_of(parts, end=end)
    if cut is not None:
        body = body[:cut]
    assert parse(InMemoryFormDataParser, body) == parse(FormDataParser, body)
