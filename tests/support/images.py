"""Small synthetic images for upload-validation tests."""
from __future__ import annotations

import io
import struct
import zlib
from typing import Any

from PIL import Image


def make_image(fmt: str = "PNG", mode: str = "RGB", size: tuple[int, int] = (16, 12), colour: Any = 0,
               **save: Any) -> bytes:
    """A small synthetic image of one ``colour`` saved by Pillow."""
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, fmt, **save)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height``; only a token IDAT follows."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
