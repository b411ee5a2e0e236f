"""Build the bundled upload corpus: scikit-image's and matplotlib's sample photos (no network),
re-encoded as users upload them. The output is committed; the same Pillow reproduces it byte for byte.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"

#: ImageNet-1k class ids a correct classifier puts in its top 5 (None: no single right answer).
_CAT_IDS = (281, 282, 283, 284, 285)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
_COFFEE_IDS = (967, 968, 504)  # espresso, cup, coffee mug
_HOPPER_IDS = (652, 834, 457, 906)  # military uniform, suit, bow tie, Windsor tie


class PhotoSpec(NamedTuple):
    """One corpus file: which photo, its longer side in pixels (None: as is) and its encoding."""
    name: str  #: its suffix picks the format
    source: str  #: a ``skimage.data`` photo, ``motorcycle`` or ``grace_hopper`` (matplotlib's)
    long_side: int | None = None
    quality: int = 90  #: JPEG quality
    progressive: bool = False
    grayscale: bool = False
    expected_class_ids: tuple[int, ...] | None = None


#: Every file a plausible upload, neither a thumbnail nor a raw camera file.
SPECS: tuple[PhotoSpec, ...] = (
    PhotoSpec("chelsea_1000_q90.jpg", "chelsea", 1000, 90, expected_class_ids=_CAT_IDS),
    PhotoSpec("chelsea_800_q80_progressive.jpg", "chelsea", 800, 80, True, expected_class_ids=_CAT_IDS),
    PhotoSpec("chelsea_451.png", "chelsea", expected_class_ids=_CAT_IDS),
    PhotoSpec("coffee_600_q95.jpg", "coffee", None, 95, expected_class_ids=_COFFEE_IDS),
    PhotoSpec("coffee_1000_q85_progressive.jpg", "coffee", 1000, 85, True, expected_class_ids=_COFFEE_IDS),
    PhotoSpec("astronaut_1024_q85_progressive.jpg", "astronaut", 1024, 85, True),
    PhotoSpec("astronaut_384.png", "astronaut", 384),
    PhotoSpec("rocket_640_q92.jpg", "rocket", None, 92),
    PhotoSpec("camera_512_q90_gray.jpg", "camera", None, 90, grayscale=True),
    PhotoSpec("motorcycle_741_q90.jpg", "motorcycle", None, 90),
    PhotoSpec("motorcycle_1280_q95.jpg", "motorcycle", 1280, 95),
    PhotoSpec("grace_hopper_1000_q90.jpg", "grace_hopper", 1000, 90, expected_class_ids=_HOPPER_IDS),
)
_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg"}


@functools.cache
def _photo(source: str) -> Image.Image:
    if source == "grace_hopper":
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
            return image.convert("RGB")
    import skimage.data

    if source == "motorcycle":
        return Image.fromarray(skimage.data.stereo_motorcycle()[0])
    return Image.fromarray(getattr(skimage.data, source)())


def encode(spec: PhotoSpec, image: Image.Image) -> tuple[bytes, str]:
    kind = _FORMATS.get(Path(spec.name).suffix.lower())
    if kind is None:
        raise ValueError(f"unsupported corpus file {spec.name!r}: use .jpg or .png")
    if spec.long_side is not None:
        scale = spec.long_side / max(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
    jpeg = {"quality": spec.quality, "progressive": spec.progressive} if kind == "jpeg" else {}
    out = io.BytesIO()
    image.convert("L" if spec.grayscale else "RGB").save(out, kind.upper(), optimize=True, **jpeg)
    return out.getvalue(), f"image/{kind}"


def build_corpus(directory: Path = CORPUS_DIR, specs: Sequence[PhotoSpec] = SPECS) -> dict[str, object]:
    directory.mkdir(parents=True, exist_ok=True)
    files: list[dict[str, Any]] = []
    for spec in specs:
        data, content_type = encode(spec, _photo(spec.source))
        (directory / spec.name).write_bytes(data)
        with Image.open(io.BytesIO(data)) as check:
            width, height = check.size
        files.append({"name": spec.name, "source": spec.source, "content_type": content_type, "width": width,
                      "height": height, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                      "progressive": spec.progressive, "grayscale": spec.grayscale,
                      "expected_class_ids": list(spec.expected_class_ids or ()) or None})
    manifest: dict[str, object] = {
        "generated_by": "python -m loadtest.make_corpus",
        "expected_class_ids_note": "ImageNet-1k ids a right answer has in its top 5; null: not checked",
        "total_bytes": sum(f["bytes"] for f in files), "files": files}
    (directory / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=CORPUS_DIR, help="output folder (default: %(default)s)")
    out = parser.parse_args(argv).out
    print(f"corpus: {len(SPECS)} files, {build_corpus(out)['total_bytes']} bytes in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
