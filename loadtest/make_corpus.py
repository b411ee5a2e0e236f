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


class PhotoSpec(NamedTuple):
    name: str  #: .png or .jpg
    source: str  #: a ``skimage.data`` photo, ``motorcycle`` or ``grace_hopper`` (matplotlib's)
    long_side: int | None = None  #: None: as is
    quality: int = 90  #: JPEG quality
    progressive: bool = False
    grayscale: bool = False


#: Every file a plausible upload, neither a thumbnail nor a raw camera file.
SPECS: tuple[PhotoSpec, ...] = (
    PhotoSpec("chelsea_1000_q90.jpg", "chelsea", 1000, 90),
    PhotoSpec("chelsea_800_q80_progressive.jpg", "chelsea", 800, 80, True),
    PhotoSpec("chelsea_451.png", "chelsea"),
    PhotoSpec("coffee_600_q95.jpg", "coffee", None, 95),
    PhotoSpec("coffee_1000_q85_progressive.jpg", "coffee", 1000, 85, True),
    PhotoSpec("astronaut_1024_q85_progressive.jpg", "astronaut", 1024, 85, True),
    PhotoSpec("astronaut_384.png", "astronaut", 384),
    PhotoSpec("rocket_640_q92.jpg", "rocket", None, 92),
    PhotoSpec("camera_512_q90_gray.jpg", "camera", None, 90, grayscale=True),
    PhotoSpec("motorcycle_741_q90.jpg", "motorcycle", None, 90),
    PhotoSpec("motorcycle_1280_q95.jpg", "motorcycle", 1280, 95),
    PhotoSpec("grace_hopper_1000_q90.jpg", "grace_hopper", 1000, 90),
)


@functools.cache
def photo(source: str) -> Image.Image:
    if source == "grace_hopper":
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
            return image.convert("RGB")
    import skimage.data

    if source == "motorcycle":
        return Image.fromarray(skimage.data.stereo_motorcycle()[0])
    return Image.fromarray(getattr(skimage.data, source)())


def encode(spec: PhotoSpec) -> tuple[bytes, Image.Image]:
    """The file's bytes and the image they hold."""
    image = photo(spec.source)
    if spec.long_side is not None:
        scale = spec.long_side / max(image.size)
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
    image, out = image.convert("L" if spec.grayscale else "RGB"), io.BytesIO()
    if spec.name.endswith(".png"):
        image.save(out, "PNG", optimize=True)
    else:
        image.save(out, "JPEG", optimize=True, quality=spec.quality, progressive=spec.progressive)
    return out.getvalue(), image


def build_corpus(directory: Path = CORPUS_DIR, specs: Sequence[PhotoSpec] = SPECS) -> dict[str, object]:
    directory.mkdir(parents=True, exist_ok=True)
    files: list[dict[str, Any]] = []
    for spec in specs:
        data, image = encode(spec)
        (directory / spec.name).write_bytes(data)
        files.append({"name": spec.name, "source": spec.source,
                      "content_type": "image/png" if spec.name.endswith(".png") else "image/jpeg",
                      "width": image.width, "height": image.height, "bytes": len(data),
                      "sha256": hashlib.sha256(data).hexdigest(), "progressive": spec.progressive,
                      "grayscale": spec.grayscale})
    manifest: dict[str, object] = {
        "generated_by": "python -m loadtest.make_corpus", "total_bytes": sum(f["bytes"] for f in files),
        "files": files}
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
