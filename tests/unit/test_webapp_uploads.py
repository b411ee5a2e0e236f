"""Upload checks: format sniffing, header-only pixel limits, top_k parsing."""
from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from common.contract import ACCEPTED_FORMATS, MAX_TOP_K, MIN_TOP_K
from tests.support.images import make_image, png_header
from webapp.exceptions import (
    ImageTooLarge,
    InvalidImage,
    InvalidParameter,
    UnsupportedMediaType,
    UploadTooLarge,
)
from webapp.uploads import ImageInfo, inspect_image, parse_top_k

LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_pixels": 40_000_000}


@pytest.mark.parametrize(
    ("fmt", "mode", "save", "expected"),
    [
        ("JPEG", "RGB", {}, "JPEG"),
        ("JPEG", "CMYK", {}, "JPEG"),
        ("JPEG", "RGB", {"progressive": True}, "JPEG"),
        ("PNG", "I;16", {}, "PNG"),
        ("PNG", "P", {}, "PNG"),
        ("PNG", "RGBA", {}, "PNG"),
        ("WEBP", "RGB", {}, "WEBP"),
        ("GIF", "P", {}, "GIF"),
        ("BMP", "RGB", {}, "BMP"),
        ("TIFF", "RGB", {}, "TIFF"),
    ],
)
def test_accepted_formats(fmt: str, mode: str, save: dict[str, Any], expected: str) -> None:
    info = inspect_image(make_image(fmt, mode, **save), **LIMITS)
    assert info == ImageInfo(expected, 16, 12)
    assert info.mime_type.startswith("image/")


def test_every_contract_format_is_accepted() -> None:
    for fmt in ACCEPTED_FORMATS:
        assert inspect_image(make_image(fmt), **LIMITS).format == fmt


def test_multi_picture_jpeg_is_accepted_as_mpo() -> None:
    data = make_image("MPO", save_all=True, append_images=[Image.new("RGB", (16, 12))])
    assert inspect_image(data, **LIMITS) == ImageInfo("MPO", 16, 12)


def test_animated_gif_is_accepted() -> None:
    frames = [Image.new("P", (8, 8), color) for color in (1, 2)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert inspect_image(buf.getvalue(), **LIMITS).format == "GIF"


@pytest.mark.parametrize(
    "data",
    [b"hello, I am a cat.jpg", b"%PDF-1.7\n", b"<svg xmlns='http://www.w3.org/2000/svg'/>",
     make_image("ICO")],
    ids=["text", "pdf", "svg", "ico"],
)
def test_unaccepted_content_is_415(data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType) as raised:
        inspect_image(data, **LIMITS)
    assert all(fmt in raised.value.message for fmt in ACCEPTED_FORMATS)


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIH",  # header cut inside IHDR
        make_image("PNG")[:20],
        b"\xff\xd8\xff\xe0" + b"garbage" * 4,
        b"GIF89a\x01",
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
        b"II*\x00\x08\x00",
    ],
    ids=["png-cut", "png-prefix", "jpeg-garbage", "gif-cut", "webp-cut", "tiff-cut"],
)
def test_corrupt_header_of_accepted_format_is_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        inspect_image(data, **LIMITS)


def test_pixel_limit_checked_from_header() -> None:
    # 48 Mpx: over our limit, under Pillow's own bomb warning threshold.
    with pytest.raises(ImageTooLarge, match="8000x6000"):
        inspect_image(png_header(8000, 6000), **LIMITS)


def test_decompression_bomb_header_is_too_large() -> None:
    with pytest.raises(ImageTooLarge):
        inspect_image(png_header(100_000, 100_000), **LIMITS)


def test_pixel_limit_is_inclusive() -> None:
    data = png_header(100, 50)
    assert inspect_image(data, max_bytes=1 << 20, max_pixels=5000).width == 100
    with pytest.raises(ImageTooLarge):
        inspect_image(data, max_bytes=1 << 20, max_pixels=4999)


def test_file_over_byte_limit_is_413() -> None:
    data = make_image("BMP", size=(64, 64))
    assert inspect_image(data, max_bytes=len(data), max_pixels=10**6).format == "BMP"
    with pytest.raises(UploadTooLarge):
        inspect_image(data, max_bytes=len(data) - 1, max_pixels=10**6)


@pytest.mark.parametrize(("raw", "expected"), [(None, 5), ("", 5), (" 3 ", 3), (str(MIN_TOP_K), MIN_TOP_K),
                                               (str(MAX_TOP_K), MAX_TOP_K)])
def test_parse_top_k(raw: str | None, expected: int) -> None:
    assert parse_top_k(raw, default=5) == expected


@pytest.mark.parametrize("raw", [str(MIN_TOP_K - 1), str(MAX_TOP_K + 1), "-1", "+3", "2.5", "1e2", "abc", "²",
                                 "9" * 5000, "0x10"])
def test_parse_top_k_rejects(raw: str) -> None:
    with pytest.raises(InvalidParameter):
        parse_top_k(raw, default=5)
