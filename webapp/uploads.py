"""Checking an upload before it is enqueued: cheap, and without decoding pixels.

The format is sniffed from the bytes with Pillow (file names and the client's
Content-Type are ignored) and the pixel count is read from the header. Full
decoding is the worker's job; a body whose header parses but whose pixel data
is broken comes back from the worker as ``InvalidImageError`` (HTTP 400).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import IO

from flask import Request
from PIL import Image

from common.contract import ACCEPTED_FORMATS, MAX_TOP_K, MIN_TOP_K

from .exceptions import (
    ImageTooLarge,
    InvalidImage,
    InvalidParameter,
    MissingImage,
    UnsupportedMediaType,
    UploadTooLarge,
)
from .multipart import InMemoryFormDataParser

__all__ = ["ImageInfo", "UploadRequest", "inspect_image", "parse_top_k", "read_upload"]

#: Format names Pillow reports for an accepted image: the contract's, and MPO,
#: which the JPEG plugin reports for the multi-picture JPEG many phones write.
_REPORTED_FORMATS = frozenset({*ACCEPTED_FORMATS, "MPO"})
#: Leading bytes of the accepted formats: such a body that Pillow cannot
#: parse is a broken image (400), anything else an unsupported type (415).
_SIGNATURES = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
    b"II+\x00",  # BigTIFF
    b"MM\x00+",
)


@dataclass(frozen=True)
class ImageInfo:
    """What the header says about an accepted image."""

    format: str
    width: int
    height: int

    @property
    def mime_type(self) -> str:
        """The format's MIME type, e.g. ``image/png``."""
        return Image.MIME.get(self.format, "application/octet-stream")


class UploadRequest(Request):
    """Request whose uploaded files stay in memory instead of temporary files, its
    multipart body split in memory (``webapp.multipart``).

    ``MAX_CONTENT_LENGTH`` bounds the body, so a disk round trip per upload
    buys nothing.
    """

    form_data_parser_class = InMemoryFormDataParser

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()


def read_upload(request: Request) -> bytes:
    """Return the image bytes: multipart field ``file``, else the raw body."""
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise MissingImage("send the image in the multipart form field 'file'")
        data = upload.read()
    else:
        data = request.get_data(cache=False)
    if not data:
        raise MissingImage("the request carries no image (empty file or body)")
    return data


def _claims_accepted_format(data: bytes) -> bool:
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def inspect_image(data: bytes, *, max_bytes: int, max_pixels: int) -> ImageInfo:
    """Check format, file size and pixel count from the header alone.

    Raises UploadTooLarge (413), UnsupportedMediaType (415), InvalidImage or
    ImageTooLarge (400).
    """
    if len(data) > max_bytes:
        raise UploadTooLarge(f"the image is {len(data)} bytes; the limit is {max_bytes}")
    try:
        # Image.open parses the header only; the pixels are not decoded.
        with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as img:
            info = ImageInfo(str(img.format), *img.size)
    except Image.DecompressionBombError:
        # Pillow's own, higher limit: the header claims a huge canvas.
        raise ImageTooLarge(f"the image has too many pixels; the limit is {max_pixels} pixels") from None
    except Exception:  # noqa: BLE001 - plugins raise many types on bad headers
        if _claims_accepted_format(data):
            raise InvalidImage("the image is corrupt or truncated and cannot be read") from None
        raise UnsupportedMediaType(_unsupported_message()) from None
    if info.format not in _REPORTED_FORMATS:
        raise UnsupportedMediaType(_unsupported_message())
    if info.width * info.height > max_pixels:
        raise ImageTooLarge(
            f"the image is {info.width}x{info.height} pixels; the limit is {max_pixels} pixels")
    return info


def _unsupported_message() -> str:
    *most, last = ACCEPTED_FORMATS
    return f"not an accepted image; send {', '.join(most)} or {last}"


def parse_top_k(raw: str | None, *, default: int) -> int:
    """Return ``top_k`` from a query/form value: an integer in MIN_TOP_K..MAX_TOP_K."""
    if raw is None or raw.strip() == "":
        return default
    text = raw.strip()
    # ASCII digits only: rejects signs, decimals, exponents, "²"; the length
    # cap keeps int() away from huge strings.
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise InvalidParameter(
            f"top_k must be an integer from {MIN_TOP_K} to {MAX_TOP_K}, got {raw[:20]!r}")
    value = int(text)
    if not MIN_TOP_K <= value <= MAX_TOP_K:
        raise InvalidParameter(f"top_k must be from {MIN_TOP_K} to {MAX_TOP_K}, got {value}")
    return value
