"""workers.preprocess: every accepted format decodes to an upright RGB picture the
real model still recognises; broken input is an InvalidImageError."""
from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageFile
from torchvision.models import ResNet50_Weights

from common.contract import InvalidImageError
from common.repository import PreprocessConfig
from tests.support.photos import CAT_CLASSES, COFFEE_CLASSES
from workers import preprocess
from workers.model import DEFAULT_MODEL, LoadedModel, load_model
from workers.preprocess import Preprocessor, decode_image, decode_jpeg_tensor

MAX_PIXELS = 40_000_000
CHELSEA = skimage.data.chelsea()  # 451 x 300 RGB
COFFEE = skimage.data.coffee()
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    return load_model(DEFAULT_MODEL, None, torch.device("cpu"))


def _top1(model: LoadedModel, picture: Image.Image) -> int:
    tensor = Preprocessor(model.preprocess)(picture)
    with torch.inference_mode():
        return int(model.module(tensor.unsqueeze(0)).argmax())


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _png(width: int, height: int, depth: int, colour_type: int, idat: bytes) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit colour, nor a bomb row by row)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _png16(pixels: np.ndarray) -> bytes:
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    return _png(pixels.shape[1], pixels.shape[0], 16, {2: 0, 3: 2}[pixels.ndim], zlib.compress(rows))


def _grey16(pixels: np.ndarray) -> np.ndarray:
    return (pixels.mean(axis=2) * 257).astype(np.uint16)


def _palette_with_alpha(pixels: np.ndarray) -> bytes:
    alpha = np.full(pixels.shape[:2], 255, np.uint8)
    alpha[:20] = 0  # a transparent band along the top
    rgba = Image.fromarray(np.dstack([pixels, alpha]), "RGBA")
    return _save(rgba.quantize(colors=255, method=Image.Quantize.FASTOCTREE), "PNG")


def _oriented(pixels: np.ndarray, orientation: int = 6) -> bytes:
    """A JPEG with EXIF ``orientation``; 6 (rotate 90 clockwise to view) stored turned a quarter left."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = Image.fromarray(pixels)
    return _save(stored.transpose(Image.Transpose.ROTATE_90) if orientation == 6 else stored, "JPEG",
                 quality=95, exif=exif)


ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {
    "jpeg": lambda p: _save(Image.fromarray(p), "JPEG", quality=90),
    "jpeg-progressive": lambda p: _save(Image.fromarray(p), "JPEG", quality=90, progressive=True),
    "jpeg-cmyk": lambda p: _save(Image.fromarray(p).convert("CMYK"), "JPEG", quality=90),
    "jpeg-exif-rotated": _oriented,
    "png": lambda p: _save(Image.fromarray(p), "PNG"),
    "png-16bit-grey": lambda p: _png16(_grey16(p)),
    "png-16bit-rgb": lambda p: _png16(p.astype(np.uint16) * 257),
    "png-palette-alpha": _palette_with_alpha,
    "png-grey-alpha": lambda p: _save(Image.fromarray(p).convert("LA"), "PNG"),
    "png-rgba": lambda p: _save(Image.fromarray(p).convert("RGBA"), "PNG"),
    "webp": lambda p: _save(Image.fromarray(p), "WEBP", quality=90),
    "gif": lambda p: _save(Image.fromarray(p), "GIF"),
    "bmp": lambda p: _save(Image.fromarray(p), "BMP"),
    "tiff": lambda p: _save(Image.fromarray(p), "TIFF"),
}


@pytest.mark.parametrize("encoding", ENCODERS)
@pytest.mark.parametrize(("photo", "expected"), [(CHELSEA, CAT_CLASSES), (COFFEE, COFFEE_CLASSES)],
                         ids=["chelsea", "coffee"])
def test_every_format_decodes_to_an_upright_rgb_the_model_recognises(
    lite0: LoadedModel, encoding: str, photo: np.ndarray, expected: set[int]
) -> None:
    picture = decode_image(ENCODERS[encoding](photo), MAX_PIXELS)
    assert picture.mode == "RGB"
    assert picture.size == (photo.shape[1], photo.shape[0])  # the EXIF-rotated one included
    assert _top1(lite0, picture) in expected


def test_pictures_decode_as_viewers_show_them() -> None:
    upright = np.asarray(decode_image(_oriented(CHELSEA), MAX_PIXELS), np.float32)
    assert np.abs(upright - CHELSEA).mean() < 3  # JPEG noise only; a wrong turn is ~50
    grey = _grey16(CHELSEA)  # 16-bit greyscale, scaled, not clipped
    assert Image.open(io.BytesIO(_png16(grey))).mode == "I;16"
    picture = np.asarray(decode_image(_png16(grey), MAX_PIXELS))
    assert np.abs(picture[..., 0].astype(int) - (grey / 257).round()).max() <= 1
    assert (picture[..., 0] == picture[..., 2]).all()
    picture = np.asarray(decode_image(_palette_with_alpha(CHELSEA), MAX_PIXELS))  # on white
    assert (picture[:20] == 255).all() and picture[40:].mean() < 200
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    gif = _save(frames[0], "GIF", save_all=True, append_images=frames[1:])  # its first frame
    assert decode_image(gif, MAX_PIXELS).getpixel((5, 5)) == (255, 0, 0)


@pytest.mark.parametrize(("fmt", "size"), [("JPEG", (451, 300)), ("PNG", (361, 240)), ("WEBP", (361, 240)),
                                           ("TIFF", (361, 240))])
def test_big_pictures_decode_reduced_but_never_below_the_draft_size(lite0: LoadedModel, fmt: str,
                                                                    size: tuple[int, int]) -> None:
    big = Image.fromarray(CHELSEA).resize((1804, 1200), Image.Resampling.BICUBIC)
    picture = decode_image(_save(big, fmt), MAX_PIXELS, draft_size=224)
    # JPEG: libjpeg's 1/4 scale (1/8 would be under 224); others: reduced by 1200 // 224 = 5.
    assert (picture.mode, picture.size) == ("RGB", size)
    assert _top1(lite0, picture) in CAT_CLASSES


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image at all",
        ENCODERS["jpeg"](CHELSEA)[:3000],  # truncated JPEG
        ENCODERS["png"](CHELSEA)[:5000],  # truncated PNG
        ENCODERS["png"](CHELSEA)[:60] + b"\x00" * 200,  # corrupt PNG body
        _save(Image.fromarray(CHELSEA), "PPM"),  # Pillow decodes it, the service does not accept it
        "chelsea.jpg",
    ],
    ids=["empty", "text", "truncated-jpeg", "truncated-png", "corrupt-png", "ppm", "not-bytes"],
)
def test_undecodable_input_is_an_invalid_image(data: bytes) -> None:
    with pytest.raises(InvalidImageError):
        decode_image(data, MAX_PIXELS)


def test_hostile_input_is_an_invalid_image_and_a_broken_exif_block_costs_only_the_rotation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise ZeroDivisionError("hostile header")

    monkeypatch.setattr("workers.preprocess.ImageOps.exif_transpose", broken)
    assert decode_image(_oriented(CHELSEA), MAX_PIXELS).mode == "RGB"
    monkeypatch.setattr(ImageFile.ImageFile, "load", broken)  # a plugin's unexpected error
    with pytest.raises(InvalidImageError, match="hostile header"):
        decode_image(ENCODERS["png"](CHELSEA), MAX_PIXELS)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # Pillow's own bomb check
    with pytest.raises(InvalidImageError, match="decompression bomb"):
        decode_image(ENCODERS["png"](CHELSEA), MAX_PIXELS)


def test_preprocessor_matches_torchvisions_own_transforms() -> None:
    weights = ResNet50_Weights.DEFAULT  # resize 232 bilinear, crop 224, ImageNet mean/std
    reference = weights.transforms()
    config = PreprocessConfig(
        input_size=reference.crop_size[0], resize_size=reference.resize_size[0], interpolation="bilinear",
        mean=tuple(reference.mean), std=tuple(reference.std),
    )
    picture = Image.fromarray(COFFEE)
    ours, theirs = Preprocessor(config)(picture), reference(picture)
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert ours.dtype == torch.float32 and ours.is_contiguous()
    # Cropping before resizing moves sample points by under a pixel; the result agrees closely.
    assert (ours - theirs).abs().mean() < 0.03
    # The GPU_DECODE path's entry: the same from uint8 pixels; non-RGB pictures are converted.
    assert torch.equal(Preprocessor(config).tensor(_pixels(picture)), ours)
    assert Preprocessor(config)(picture.convert("L")).shape == (3, 224, 224)


def _bomb_png(side: int) -> bytes:
    """The issue's decompression bomb: a side x side RGBA PNG of zeros, compressed row by row."""
    packer, row = zlib.compressobj(9), b"\x00" * (1 + 4 * side)
    return _png(side, side, 8, 6, b"".join(packer.compress(row) for _ in range(side)) + packer.flush())


def test_the_decoded_size_is_refused_before_decoding_and_counts_jpegs_at_their_reduced_scale(
        monkeypatch: pytest.MonkeyPatch) -> None:
    big = _save(Image.fromarray(CHELSEA).resize((1804, 1200), Image.Resampling.BICUBIC), "JPEG", quality=90)
    budget = 1804 * 1200 * 4 - 1  # the full-size picture is over it; its 1/4 draft is not
    assert 224 <= min(decode_image(big, MAX_PIXELS, draft_size=224, max_bytes=budget).size) < 1200
    with pytest.raises(InvalidImageError, match="decoded, over the limit"):
        decode_image(big, MAX_PIXELS, max_bytes=budget)
    bomb = _bomb_png(6324)  # 39,992,976 pixels: under 40 MP; 153 MiB decoded from ~160 KB
    assert len(bomb) < 200_000
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels were decoded"))
    with pytest.raises(InvalidImageError, match="6324x6324 PNG RGBA: 153 MiB decoded, over the limit of 48"):
        decode_image(bomb, MAX_PIXELS, draft_size=256)


# -- the GPU_DECODE path, run here on the CPU (the same code, torchvision's CPU decoder) ---

SMALL = CHELSEA[:60, :100]  # 100 x 60: under every draft size, so both paths decode full scale


def _pixels(picture: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("data", [*(ENCODERS[kind](CHELSEA) for kind in ("jpeg", "jpeg-progressive")),
                                  _oriented(CHELSEA), *(_oriented(SMALL, n) for n in range(1, 9))])
def test_jpeg_tensor_decoding_gives_the_pillow_paths_upright_pixels(data: bytes) -> None:
    pixels = decode_jpeg_tensor(data, MAX_PIXELS, CPU)
    expected = _pixels(decode_image(data, MAX_PIXELS))
    assert pixels is not None and pixels.dtype == torch.uint8 and pixels.shape == expected.shape
    assert (pixels.int() - expected.int()).abs().max() <= 2  # both libjpeg: equal, or rounding apart


@pytest.mark.parametrize("data", [  # truncated: the Pillow path's 400
    ENCODERS["png"](CHELSEA), ENCODERS["jpeg-cmyk"](CHELSEA), ENCODERS["jpeg"](CHELSEA)[:3000],
    b"\xff\xd8\xff garbage \xff\xd9", b""], ids=["png", "cmyk", "truncated", "garbage", "empty"])
def test_anything_but_a_whole_rgb_or_grey_jpeg_goes_to_the_pillow_path(data: bytes) -> None:
    assert decode_jpeg_tensor(data, MAX_PIXELS, CPU) is None


def test_a_jpeg_over_the_decoded_budget_or_that_the_decoder_refuses_goes_to_the_pillow_path(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = ENCODERS["jpeg"](CHELSEA)
    assert decode_jpeg_tensor(data, MAX_PIXELS, CPU, max_bytes=3 * 451 * 300 - 1) is None
    assert decode_jpeg_tensor(data, MAX_PIXELS, CPU, max_bytes=3 * 451 * 300) is not None
    with pytest.raises(InvalidImageError, match="451x300 = 135300 pixels, over the limit of 100000"):
        decode_jpeg_tensor(data, 100_000, CPU)  # as decode_image, from the header

    def broken(*_args: object, **_kwargs: object) -> torch.Tensor:
        raise RuntimeError("nvjpeg says no")

    monkeypatch.setattr(preprocess, "decode_jpeg", broken)
    monkeypatch.setattr(preprocess, "_fallback_logged", False)
    assert decode_jpeg_tensor(ENCODERS["jpeg"](CHELSEA), MAX_PIXELS, CPU) is None
    assert "nvjpeg says no" in caplog.text

