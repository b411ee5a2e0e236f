"""``multipart/form-data`` for bodies already in memory, at a fraction of werkzeug's cost.

gunicorn's worker (``webapp.gunicorn_worker``) reads each body whole before a thread
takes it, and ``MAX_CONTENT_LENGTH`` bounds it, so there is nothing to stream: the
parts are found with ``bytes.find`` and sliced out. Werkzeug's streaming parser
compiles a regular expression for each request's boundary and scans the body in
chunks: 17% of the web process' Python time under load, 0.62 ms against 0.045 ms
here for a 107 KB photo (``docs/benchmarks.md``, "Stack overhead").

Only the plain shape is parsed here: the body starts with the first delimiter, each
part has ``Name: value`` header lines in UTF-8 and a ``form-data`` disposition with a
name, and the close delimiter ends it. Anything else (a preamble, padding after a
delimiter, a missing close delimiter, too many parts, a text field over the memory
limit...) goes to werkzeug's parser, so every request gets werkzeug's answer, errors
included; ``tests/unit/test_webapp_multipart.py`` checks the two agree.
"""
from __future__ import annotations

import io
from typing import IO, Any

from werkzeug.datastructures import FileStorage, Headers
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header

__all__ = ["InMemoryFormDataParser", "split_parts"]

_CRLF = b"\r\n"


def split_parts(body: bytes, boundary: bytes,
                max_parts: int | None = None) -> list[tuple[Headers, bytes]] | None:
    """Each part's headers and content, or None unless ``body`` has the plain shape."""
    delimiter = b"--" + boundary
    if not body.startswith(delimiter + _CRLF):
        return None
    separator = _CRLF + delimiter
    parts: list[tuple[Headers, bytes]] = []
    start = len(delimiter) + 2
    while True:
        end = body.find(separator, start)
        header_end = body.find(_CRLF + _CRLF, start, end) if end >= 0 else -1
        if header_end <= start:  # no end, no header block, or an empty one
            return None
        headers = _headers(body[start:header_end])
        if headers is None:
            return None
        parts.append((headers, body[header_end + 4:end]))
        if max_parts is not None and len(parts) > max_parts:
            return None
        after = end + len(separator)
        if body.startswith(b"--", after):
            return parts
        if not body.startswith(_CRLF, after):
            return None
        start = after + 2


def _headers(raw: bytes) -> Headers | None:
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return None
    headers = Headers()
    for line in text.split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon or not name.strip() or "\r" in line or "\n" in line:
            return None  # werkzeug also ends headers at a bare LF or CR: its call
        headers.add(name.strip(), value.strip())
    return headers


class InMemoryFormDataParser(FormDataParser):
    """Werkzeug's form parser, with plain multipart bodies split in memory (see the module)."""

    def _parse_multipart(self, stream: IO[bytes], mimetype: str, content_length: int | None,
                         options: dict[str, str]) -> Any:
        boundary = options.get("boundary", "").encode("ascii")
        if not boundary:
            raise ValueError("Missing boundary")
        body = stream.read()
        parsed = self._fields(split_parts(body, boundary, self.max_form_parts))
        if parsed is None:
            return super()._parse_multipart(io.BytesIO(body), mimetype, content_length, options)
        form, files = parsed
        return stream, form, files

    def _fields(self, parts: list[tuple[Headers, bytes]] | None) -> tuple[Any, Any] | None:
        if parts is None:
            return None
        fields: list[tuple[str, str]] = []
        files: list[tuple[str, FileStorage]] = []
        for headers, content in parts:
            disposition, params = parse_options_header(headers.get("content-disposition"))
            if disposition != "form-data" or "name" not in params:
                return None
            name = params["name"]
            if "filename" in params:
                upload = FileStorage(io.BytesIO(content), params["filename"], name, headers=headers)
                files.append((name, upload))
            elif self.max_form_memory_size is not None and len(content) > self.max_form_memory_size:
                return None
            else:
                fields.append((name, content.decode("utf-8", "replace")))
        return self.cls(fields), self.cls(files)  # the request's class: immutable by default
