"""The in-memory multipart parser gives werkzeug's answer for every body, plain or not."""
from __future__ import annotations

import io
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.formparser import FormDataParser

from webapp.multipart import InMemoryFormDataParser, split_parts

BOUNDARY = "----formdata-abc123"


Parsed = tuple[dict[str, list[str]], dict[str, list[tuple[str | None, str | None, bytes]]]]


def parse(parser_class: type[FormDataParser], body: bytes, boundary: str = BOUNDARY, **limits: Any) -> Parsed:
    """Form and files as plain values, or the exception's class name; built as a Flask
    request builds them (immutable dicts)."""
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


def test_what_the_fast_path_does_not_take_goes_to_werkzeug() -> None:
    preamble = b"preamble\r\n" + PLAIN
    truncated = PLAIN[:-30]
    padded = PLAIN.replace(BOUNDARY.encode() + b"\r\n", BOUNDARY.encode() + b" \r\n", 1)
    for body in (preamble, truncated, padded):
        assert split_parts(body, BOUNDARY.encode()) is None
        assert parse(InMemoryFormDataParser, body) == parse(FormDataParser, body)


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
