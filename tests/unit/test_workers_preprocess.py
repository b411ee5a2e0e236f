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
from workers import preprocess
from workers.model import DEFAULT_MODEL, LoadedModel, PreprocessConfig, load_model
from workers.preprocess import Preprocessor, decode_image, decode_jpeg_tensor

MAX_PIXELS = 40_000_000
CAT_CLASSES = {281, 282, 283, 284, 285}
COFFEE_CLASSES = {967, 968, 504}
CHELSEA = skimage.data.chelsea()  # 451 x 300 RGB
COFFEE = skimage.data.coffee()


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


def _png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour)."""
    height, width = pixels.shape[:2]
    colour_type = {2: 0, 3: 2}[pixels.ndim]  # greyscale, RGB

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def _grey16(pixels: np.ndarray) -> np.ndarray:
    return (pixels.mean(axis=2) * 257).astype(np.uint16)


def _palette_with_alpha(pixels: np.ndarray) -> bytes:
    alpha = np.full(pixels.shape[:2], 255, np.uint8)
    alpha[:20] = 0  # a transparent band along the top
    rgba = Image.fromarray(np.dstack([pixels, alpha]), "RGBA")
    return _save(rgba.quantize(colors=255, method=Image.Quantize.FASTOCTREE), "PNG")


def _exif_rotated(pixels: np.ndarray) -> bytes:
    """Stored turned a quarter left, with EXIF orientation 6 (rotate 90 clockwise to view)."""
    stored = Image.fromarray(pixels).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(stored, "JPEG", quality=95, exif=exif)


ENCODERS: dict[str, Callable[[np.ndarray], bytes]] = {
    "jpeg": lambda p: _save(Image.fromarray(p), "JPEG", quality=90),
    "jpeg-progressive": lambda p: _save(Image.fromarray(p), "JPEG", quality=90, progressive=True),
    "jpeg-cmyk": lambda p: _save(Image.fromarray(p).convert("CMYK"), "JPEG", quality=90),
    "jpeg-exif-rotated": _exif_rotated,
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


def test_exif_orientation_turns_the_picture_the_right_way() -> None:
    picture = np.asarray(decode_image(_exif_rotated(CHELSEA), MAX_PIXELS), dtype=np.float32)
    assert np.abs(picture - CHELSEA).mean() < 3  # JPEG noise only; a wrong turn is ~50


def test_16bit_greyscale_is_scaled_not_clipped() -> None:
    grey = _grey16(CHELSEA)
    assert Image.open(io.BytesIO(_png16(grey))).mode == "I;16"
    picture = np.asarray(decode_image(_png16(grey), MAX_PIXELS))
    assert np.abs(picture[..., 0].astype(int) - (grey / 257).round()).max() <= 1
    assert (picture[..., 0] == picture[..., 2]).all()


def test_transparency_is_composited_on_white() -> None:
    picture = np.asarray(decode_image(_palette_with_alpha(CHELSEA), MAX_PIXELS))
    assert (picture[:20] == 255).all()
    assert picture[40:].mean() < 200


def test_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    data = _save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data, MAX_PIXELS).getpixel((5, 5)) == (255, 0, 0)


def test_large_jpeg_decodes_at_reduced_scale_but_never_below_the_draft_size(lite0: LoadedModel) -> None:
    big = Image.fromarray(CHELSEA).resize((1804, 1200), Image.Resampling.BICUBIC)
    picture = decode_image(_save(big, "JPEG", quality=90), MAX_PIXELS, draft_size=224)
    assert 224 <= min(picture.size) < 1200
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
    ],
    ids=["empty", "text", "truncated-jpeg", "truncated-png", "corrupt-png", "ppm"],
)
def test_undecodable_input_is_an_invalid_image(data: bytes) -> None:
    with pytest.raises(InvalidImageError):
        decode_image(data, MAX_PIXELS)


def test_non_bytes_input_is_an_invalid_image() -> None:
    with pytest.raises(InvalidImageError, match="expected image bytes"):
        decode_image("chelsea.jpg", MAX_PIXELS)  # type: ignore[arg-type]


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(InvalidImageError, match="451x300 = 135300 pixels, over the limit of 100000"):
        decode_image(ENCODERS["png"](CHELSEA), 100_000)


def test_pillow_decompression_bomb_is_an_invalid_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(InvalidImageError, match="decompression bomb"):
        decode_image(ENCODERS["png"](CHELSEA), MAX_PIXELS)


def test_max_pixels_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        decode_image(ENCODERS["png"](CHELSEA), 0)


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


def test_preprocessor_accepts_non_rgb_pictures(lite0: LoadedModel) -> None:
    grey = Image.fromarray(CHELSEA).convert("L")
    assert Preprocessor(lite0.preprocess)(grey).shape == (3, 224, 224)


def _bomb_png(side: int) -> bytes:
    """The issue's decompression bomb: a side x side RGBA PNG of zeros, compressed row by row."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, row = zlib.compressobj(9), b"\x00" * (1 + 4 * side)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _never_load(self: Image.Image) -> None:
    raise AssertionError("pixels were decoded")


def test_a_png_bomb_under_the_pixel_limit_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = _bomb_png(6324)  # 39,992,976 pixels: under 40 MP; 153 MiB decoded from ~160 KB
    assert len(bomb) < 200_000
    monkeypatch.setattr(ImageFile.ImageFile, "load", _never_load)
    expected = r"6324x6324 PNG RGBA: 153 MiB decoded, over the limit of 48 MiB"
    with pytest.raises(InvalidImageError, match=expected):
        decode_image(bomb, MAX_PIXELS, draft_size=256)


def test_the_decoded_size_budget_counts_jpegs_at_their_reduced_scale() -> None:
    big = _save(Image.fromarray(CHELSEA).resize((1804, 1200), Image.Resampling.BICUBIC), "JPEG", quality=90)
    budget = 1804 * 1200 * 4 - 1  # the full-size picture is over it; its 1/4 draft is not
    with pytest.raises(InvalidImageError, match="decoded, over the limit"):
        decode_image(big, MAX_PIXELS, max_bytes=budget)
    assert 224 <= min(decode_image(big, MAX_PIXELS, draft_size=224, max_bytes=budget).size) < 1200


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_other_formats_are_reduced_right_after_decoding(lite0: LoadedModel, fmt: str) -> None:
    big = Image.fromarray(CHELSEA).resize((1804, 1200), Image.Resampling.BICUBIC)
    picture = decode_image(_save(big, fmt), MAX_PIXELS, draft_size=224)
    assert (picture.mode, picture.size) == ("RGB", (361, 240))  # reduced by 1200 // 224 = 5
    assert _top1(lite0, picture) in CAT_CLASSES


def test_an_unexpected_plugin_error_is_an_invalid_image(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Image.Image) -> None:
        raise ZeroDivisionError("hostile header")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken)
    with pytest.raises(InvalidImageError, match="hostile header"):
        decode_image(ENCODERS["png"](CHELSEA), MAX_PIXELS)


def test_an_exif_block_that_breaks_in_an_unexpected_way_costs_only_the_rotation(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(image: Image.Image, in_place: bool = False) -> None:
        raise ZeroDivisionError("EXIF rational with a zero denominator")

    monkeypatch.setattr("workers.preprocess.ImageOps.exif_transpose", broken)
    assert decode_image(_exif_rotated(CHELSEA), MAX_PIXELS).mode == "RGB"


# -- the GPU_DECODE path, run here on the CPU (the same code, torchvision's CPU decoder) ---

CPU = torch.device("cpu")
SMALL = CHELSEA[:60, :100]  # 100 x 60: under every draft size, so both paths decode full scale


def _pixels(picture: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1)


@pytest.mark.parametrize("encoding", ["jpeg", "jpeg-progressive", "jpeg-exif-rotated"])
def test_jpeg_tensor_decoding_gives_the_pillow_paths_pixels(encoding: str) -> None:
    data = ENCODERS[encoding](CHELSEA)
    pixels = decode_jpeg_tensor(data, MAX_PIXELS, CPU)
    assert pixels is not None and pixels.dtype == torch.uint8 and pixels.shape == (3, 300, 451)
    expected = _pixels(decode_image(data, MAX_PIXELS))
    assert (pixels.int() - expected.int()).abs().max() <= 2  # both libjpeg: equal, or rounding apart


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_undone_as_pillow_does(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _save(Image.fromarray(SMALL), "JPEG", quality=95, exif=exif)
    pixels = decode_jpeg_tensor(data, MAX_PIXELS, CPU)
    expected = _pixels(decode_image(data, MAX_PIXELS))
    assert pixels is not None and pixels.shape == expected.shape
    assert (pixels.int() - expected.int()).abs().max() <= 2


def test_preprocessor_tensor_path_is_the_picture_path() -> None:
    preprocessor = Preprocessor(PreprocessConfig(224, 256, "bilinear", (0.485, 0.456, 0.406),
                                                 (0.229, 0.224, 0.225)))
    picture = Image.fromarray(COFFEE)
    assert torch.equal(preprocessor.tensor(_pixels(picture)), preprocessor(picture))
    with pytest.raises(ValueError, match="3 x H x W uint8"):
        preprocessor.tensor(torch.zeros(3, 8, 8))


def test_jpeg_tensor_decoding_applies_the_pixel_limit_from_the_header() -> None:
    with pytest.raises(InvalidImageError, match="451x300 = 135300 pixels, over the limit of 100000"):
        decode_jpeg_tensor(ENCODERS["jpeg"](CHELSEA), 100_000, CPU)


@pytest.mark.parametrize(
    "data",
    [
        ENCODERS["png"](CHELSEA),
        ENCODERS["jpeg-cmyk"](CHELSEA),
        ENCODERS["jpeg"](CHELSEA)[:3000],  # truncated: the Pillow path's 400
        b"\xff\xd8\xff garbage \xff\xd9",
        b"",
        "chelsea.jpg",
    ],
    ids=["png", "cmyk", "truncated", "garbage", "empty", "not-bytes"],
)
def test_anything_but_a_whole_rgb_or_grey_jpeg_goes_to_the_pillow_path(data: bytes) -> None:
    assert decode_jpeg_tensor(data, MAX_PIXELS, CPU) is None


def test_a_jpeg_over_the_decoded_budget_goes_to_the_pillow_path_which_drafts_it() -> None:
    data = ENCODERS["jpeg"](CHELSEA)
    assert decode_jpeg_tensor(data, MAX_PIXELS, CPU, max_bytes=3 * 451 * 300 - 1) is None
    assert decode_jpeg_tensor(data, MAX_PIXELS, CPU, max_bytes=3 * 451 * 300) is not None


def test_a_decoder_failure_falls_back(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_args: object, **_kwargs: object) -> torch.Tensor:
        raise RuntimeError("nvjpeg says no")

    monkeypatch.setattr(preprocess, "decode_jpeg", broken)
    monkeypatch.setattr(preprocess, "_fallback_logged", False)
    assert decode_jpeg_tensor(ENCODERS["jpeg"](CHELSEA), MAX_PIXELS, CPU) is None
    assert "nvjpeg says no" in caplog.text


def test_jpeg_tensor_decoding_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        decode_jpeg_tensor(ENCODERS["jpeg"](CHELSEA), 0, CPU)
    with pytest.raises(TypeError, match="torch.device"):
        decode_jpeg_tensor(ENCODERS["jpeg"](CHELSEA), MAX_PIXELS, "cuda")  # type: ignore[arg-type]
