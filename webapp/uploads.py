"""What a classify request carries, checked before anything is queued: the image, ``top_k``, a deadline."""
from __future__ import annotations

import io
import math
from typing import IO, Any

from flask import Request
from PIL import Image
from werkzeug.datastructures import FileStorage, Headers
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header
from werkzeug.wrappers import Request as BaseRequest

from common.contract import ACCEPTED_FORMATS, MAX_TOP_K, MIN_TOP_K, check_top_k

from .errors import ApiError

__all__ = ["MIN_TIMEOUT", "TIMEOUT_HEADERS", "InMemoryFormDataParser", "UploadRequest", "inspect_image",
           "parse_top_k", "read_upload", "requested_timeout", "split_parts"]

#: The contract's formats, and MPO: the JPEG plugin's name for the multi-picture JPEG of many phones.
_REPORTED_FORMATS = frozenset({*ACCEPTED_FORMATS, "MPO"})
#: Leading bytes of the accepted formats: such a body Pillow cannot parse is broken (400), not unsupported.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM",
               b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # JPEG, PNG, GIF, BMP, TIFF, BigTIFF
#: Headers a client may state its own deadline in, in seconds (first found wins).
TIMEOUT_HEADERS = ("Request-Timeout", "X-Request-Timeout")
#: Shortest deadline a client may ask for, seconds: below it is a client error (400), not a timeout.
MIN_TIMEOUT = 0.1
_CRLF = b"\r\n"


def read_upload(request: BaseRequest) -> bytes:
    """The image bytes: multipart field ``file``, else the raw body."""
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise ApiError("missing_image", "send the image in the multipart form field 'file'")
        data = upload.read()
    else:
        data = request.get_data(cache=False)
    if not data:
        raise ApiError("missing_image", "the request carries no image (empty file or body)")
    return data


def inspect_image(data: bytes, *, max_bytes: int, max_pixels: int) -> str:
    """The format Pillow reads from the header; 413, 415 or 400 (broken, or over ``max_pixels``)."""
    if len(data) > max_bytes:
        raise ApiError("payload_too_large", f"the image is {len(data)} bytes; the limit is {max_bytes}")
    try:
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as img:
            fmt, (width, height) = str(img.format), img.size
    except Image.DecompressionBombError:  # Pillow's own, higher limit: the header claims a huge canvas
        raise ApiError("image_too_large",
                       f"the image has too many pixels; the limit is {max_pixels} pixels") from None
    except Exception:  # noqa: BLE001 - plugins raise many types on bad headers
        if data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            raise ApiError("invalid_image", "the image is corrupt or truncated and cannot be read") from None
        fmt = ""
    if fmt not in _REPORTED_FORMATS:
        *most, last = ACCEPTED_FORMATS
        raise ApiError("unsupported_media_type", f"not an accepted image; send {', '.join(most)} or {last}")
    if width * height > max_pixels:
        raise ApiError("image_too_large",
                       f"the image is {width}x{height} pixels; the limit is {max_pixels} pixels")
    return fmt


def parse_top_k(raw: str | None, *, default: int) -> int:
    """``top_k`` from a query or form value (``default`` when absent); 400 outside the contract's range."""
    if raw is None or not raw.strip():
        return default
    text = raw.strip()
    try:  # ASCII digits only (no signs, decimals, exponents, "²"); the length cap keeps int() cheap
        if not (text.isascii() and text.isdigit()) or len(text) > 9:
            raise ValueError(f"top_k must be an integer from {MIN_TOP_K} to {MAX_TOP_K}, got {raw[:20]!r}")
        return check_top_k(int(text))
    except ValueError as exc:
        raise ApiError("invalid_parameter", str(exc)) from None


def requested_timeout(request: BaseRequest) -> float | None:
    """The client's deadline in seconds (``?timeout=``, else a :data:`TIMEOUT_HEADERS` header), or None."""
    source = "timeout" if "timeout" in request.args else next(
        (header for header in TIMEOUT_HEADERS if header in request.headers), None)
    if source is None:
        return None
    raw = request.args[source] if source == "timeout" else request.headers[source]
    text = raw.strip()
    try:
        seconds = float(text) if len(text) <= 32 else math.nan  # float() of a huge string costs time
    except ValueError:
        seconds = math.nan
    if not MIN_TIMEOUT <= seconds < math.inf:
        raise ApiError("invalid_parameter",
                       f"{source} must be a number of seconds from {MIN_TIMEOUT:g}, got {raw[:20]!r}")
    return seconds


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
        # No end, no header block or an empty one, bad headers, or too many parts.
        if header_end <= start or (headers := _headers(body[start:header_end])) is None or (
                max_parts is not None and len(parts) >= max_parts):
            return None
        parts.append((headers, body[header_end + 4:end]))
        after = end + len(separator)
        if body.startswith(b"--", after):
            return parts
        if not body.startswith(_CRLF, after):
            return None
        start = after + 2


def _headers(raw: bytes) -> Headers | None:
    try:
        lines = raw.decode().split("\r\n")
    except UnicodeDecodeError:
        return None
    pairs = [line.partition(":") for line in lines]
    # A bare LF or CR: werkzeug ends the headers there too, its call.
    if any(not colon or not name.strip() or "\r" in line or "\n" in line
           for line, (name, colon, _) in zip(lines, pairs, strict=True)):
        return None
    return Headers([(name.strip(), value.strip()) for name, _, value in pairs])


class InMemoryFormDataParser(FormDataParser):
    """Werkzeug's, but a plain multipart body (whole and bounded) is split with ``bytes.find``: less CPU."""

    def _parse_multipart(self, stream: IO[bytes], mimetype: str, content_length: int | None,
                         options: dict[str, str]) -> Any:
        boundary = options.get("boundary", "").encode("ascii")
        if not boundary:
            raise ValueError("Missing boundary")
        body = stream.read()
        parts = split_parts(body, boundary, self.max_form_parts)
        fields: list[tuple[str, str]] = []
        files: list[tuple[str, FileStorage]] = []
        for headers, content in parts or ():
            disposition, params = parse_options_header(headers.get("content-disposition"))
            name, filename = params.get("name"), params.get("filename")
            if disposition != "form-data" or name is None or (
                    filename is None and self.max_form_memory_size is not None
                    and len(content) > self.max_form_memory_size):
                parts = None
                break
            if filename is None:
                fields.append((name, content.decode("utf-8", "replace")))
            else:
                files.append((name, FileStorage(io.BytesIO(content), filename, name, headers=headers)))
        if parts is None:
            return super()._parse_multipart(io.BytesIO(body), mimetype, content_length, options)
        return stream, self.cls(fields), self.cls(files)  # the request's class: immutable by default


class UploadRequest(Request):
    """A request whose files stay in memory (the body is bounded: a disk round trip buys nothing)."""

    form_data_parser_class = InMemoryFormDataParser

    def _get_file_stream(self, total_content_length: int | None, content_type: str | None,
                         filename: str | None = None, content_length: int | None = None) -> IO[bytes]:
        return io.BytesIO()
