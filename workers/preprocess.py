"""Image bytes -> RGB picture -> normalised CHW float tensor; torchvision's result, cheaper: big pictures
decode at reduced scale, the crop comes before the resize, floats only at the final size."""
from __future__ import annotations

import io
import logging
import struct
import warnings

import numpy as np
import torch
import torchvision.transforms.v2.functional as F
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import InterpolationMode

from common.contract import ACCEPTED_FORMATS, InvalidImageError
from common.repository import PreprocessConfig

__all__ = ["DEFAULT_MAX_DECODED_BYTES", "Preprocessor", "decode_image", "decode_jpeg_tensor"]

logger = logging.getLogger(__name__)

#: What Pillow raises on malformed input, depending on the plugin.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, struct.error,
                  Image.DecompressionBombError, Image.DecompressionBombWarning)
_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
#: Largest decoded picture, in bytes, when the caller gives none (``MAX_DECODED_MB``).
DEFAULT_MAX_DECODED_BYTES = 48 * 2**20
#: Bytes Pillow holds per pixel in each mode (3- and 4-band modes are stored as 32 bits).
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
#: Modes ``Image.reduce`` averages correctly (not palettes or bilevel).
_REDUCIBLE = ("L", "LA", "La", "RGB", "RGBA", "RGBa", "I", "I;16", "F", "CMYK", "YCbCr")


def _open(data: bytes, max_pixels: int, formats: tuple[str, ...]) -> Image.Image:
    """The picture's header, nothing decoded yet: over ``max_pixels`` is an InvalidImageError."""
    with warnings.catch_warnings():
        # Pillow only warns between its bomb limit and twice that; refuse those too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data), formats=formats)
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImageError(f"image is {width}x{height} = {width * height} pixels, over the limit of "
                                f"{max_pixels}")
    return image


def decode_image(data: bytes, max_pixels: int, draft_size: int | None = None,
                 max_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> Image.Image:
    """An upload as an upright RGB picture; too big is checked from the header (small PNG, huge picture)."""
    try:
        image = _open(data, max_pixels, ACCEPTED_FORMATS)
        if draft_size is not None and image.format in ("JPEG", "MPO"):
            image.draft("RGB", (draft_size, draft_size))  # libjpeg decodes at 1/2..1/8 scale
        width, height = image.size
        size = width * height * _BYTES_PER_PIXEL.get(image.mode, 4)
        if size > max_bytes:
            raise InvalidImageError(
                f"image is {width}x{height} {image.format} {image.mode}: {size / 2**20:.0f} MiB "
                f"decoded, over the limit of {max_bytes / 2**20:.0f} MiB; send a smaller "
                "picture (or a JPEG, which decodes at reduced size)")
        image.load()
        try:
            ImageOps.exif_transpose(image, in_place=True)
        except Exception as exc:  # the pixels decoded; a broken EXIF block only costs the rotation
            logger.warning("Ignoring unreadable EXIF orientation: %s", exc)
        if draft_size is not None and image.mode in _REDUCIBLE and min(image.size) // draft_size >= 2:
            # Draft mode for the other formats, before the colour conversions copy the picture.
            image = image.reduce(min(image.size) // draft_size)
        return _to_rgb(image)
    except (InvalidImageError, MemoryError):
        raise
    except _DECODE_ERRORS as exc:
        raise InvalidImageError(f"cannot decode image: {exc}") from exc
    except Exception as exc:  # a plugin's unexpected error on hostile input: that request's 400
        logger.warning("Unexpected error decoding an image: %r", exc)
        raise InvalidImageError(f"cannot decode image: {exc!r}") from exc


def decode_jpeg_tensor(data: bytes, max_pixels: int, device: torch.device,
                       max_bytes: int = DEFAULT_MAX_DECODED_BYTES) -> torch.Tensor | None:
    """A JPEG decoded on ``device`` to upright uint8 RGB; None when :func:`decode_image` should take it."""
    if not (data.startswith(b"\xff\xd8\xff") and data.rstrip(b"\x00").endswith(b"\xff\xd9")):
        return None
    try:
        image = _open(data, max_pixels, ("JPEG",))
    except InvalidImageError:
        raise
    except _DECODE_ERRORS:
        return None  # the CPU path reports it
    width, height = image.size
    if image.format != "JPEG" or image.mode not in ("RGB", "L") or 3 * width * height > max_bytes:
        return None
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception as exc:
        logger.warning("Ignoring unreadable EXIF orientation: %s", exc)
        orientation = 1
    try:
        pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                             mode=ImageReadMode.RGB, device=device)
        if tuple(pixels.shape) != (3, height, width):
            raise ValueError(f"decoded shape {tuple(pixels.shape)}, header {width}x{height}")
    except Exception as exc:  # nvJPEG refuses some valid files (e.g. unusual subsampling)
        global _fallback_logged
        logger.log(logging.DEBUG if _fallback_logged else logging.WARNING,  # the first one, loudly
                   "GPU JPEG decoding failed, decoding on the CPU instead: %r", exc)
        _fallback_logged = True
        return None
    # ImageOps.exif_transpose on a tensor: 5..8 transpose first, then flip as 1..4.
    if orientation in (5, 6, 7, 8):
        pixels, orientation = pixels.transpose(-1, -2), orientation - 4
    flips = {2: (-1,), 3: (-1, -2), 4: (-2,)}.get(orientation)
    return pixels.flip(flips) if flips else pixels


_fallback_logged = False


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        # 16-bit greyscale: convert("L") would clip everything above 255 to white.
        pixels = np.asarray(image, dtype=np.float32) / 257.0
        image = Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        pixels = np.asarray(image, dtype=np.float32)
        scale = 255.0 if pixels.size and np.nanmax(pixels) <= 1.0 else 1.0
        image = Image.fromarray(np.clip(np.nan_to_num(pixels) * scale + 0.5, 0, 255).astype(np.uint8), "L")
    elif mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image.convert("RGB")


class Preprocessor:
    """An RGB picture as the normalised tensor a model expects: torchvision's eval transforms, cheaper."""

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config
        #: The smallest shorter side worth decoding: resizing never upsamples below this.
        self.draft_size = config.resize_size
        self._interpolation = _INTERPOLATION[config.interpolation]
        std = torch.tensor(config.std, dtype=torch.float32).view(3, 1, 1)
        mean = torch.tensor(config.mean, dtype=torch.float32).view(3, 1, 1)
        # ToDtype(scale=True) then Normalize, as one multiply-add: x * scale + offset; by device.
        self._constants = {torch.device("cpu"): (-mean / std, 1.0 / (255.0 * std))}

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.tensor(F.pil_to_tensor(image if image.mode == "RGB" else image.convert("RGB")))

    def tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        """The same from ``3 x H x W`` uint8 RGB pixels, on the pixels' device."""
        height, width = pixels.shape[-2:]
        # The centre crop, in source pixels: input/resize of the shorter side.
        side = max(1, round(min(height, width) * self.config.crop_pct))
        top, left = (height - side) // 2, (width - side) // 2
        size = self.config.input_size
        pixels = F.resize(pixels[:, top:top + side, left:left + side], [size, size],
                          interpolation=self._interpolation, antialias=True)
        if pixels.device not in self._constants:  # GPU_DECODE's, copied there once
            offset, scale = self._constants[torch.device("cpu")]
            self._constants[pixels.device] = (offset.to(pixels.device), scale.to(pixels.device))
        offset, scale = self._constants[pixels.device]
        return torch.addcmul(offset, pixels.to(torch.float32), scale)
