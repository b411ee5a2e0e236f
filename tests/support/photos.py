"""Real photos, offline: scikit-image's samples and matplotlib's Grace Hopper."""
from __future__ import annotations

import io
from functools import cache

import numpy as np
from PIL import Image

#: ImageNet classes each photo must come back as.
CAT_CLASSES = set(range(281, 286))
COFFEE_CLASSES = {967, 968, 504}


@cache
def photo(name: str) -> np.ndarray:
    """An RGB uint8 array of a named sample photo."""
    if name == "grace_hopper":
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
            return np.asarray(image.convert("RGB"))
    import skimage.data

    return getattr(skimage.data, name)()


def encode(array: np.ndarray, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def distinct_photos(count: int) -> list[bytes]:
    """``count`` different JPEGs: crops and mirror images of six photos."""
    names = ["chelsea", "coffee", "astronaut", "rocket", "cat", "grace_hopper"]
    out: list[bytes] = []
    for index in range(count):
        array = photo(names[index % len(names)])
        variant = index // len(names)
        h, w = array.shape[:2]
        cut = variant * max(1, min(h, w) // 48)
        array = array[cut: h - cut, cut: w - cut]
        if variant % 2:
            array = array[:, ::-1]
        out.append(encode(np.ascontiguousarray(array), quality=90))
    return out
