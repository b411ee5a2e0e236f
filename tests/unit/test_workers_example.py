"""``python -m workers.example``: the offline example classifier, made and served as a user's folder is."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from common.repository import read_model
from workers.example import build, corpus_photos
from workers.formats import load_spec
from workers.preprocess import Preprocessor, decode_image

pytestmark = pytest.mark.unit


def test_the_example_names_each_bundled_photo_by_its_subject(tmp_path: Path) -> None:
    labels = build(tmp_path / "photos")
    photos = corpus_photos()
    assert labels == sorted(set(photos.values())) and len(labels) == 7
    spec = read_model(tmp_path / "photos")  # what the web app reads: no torch
    assert (spec.format, spec.labels, spec.preprocess.input_size) == ("export", tuple(labels), 224)
    loaded = load_spec(spec, torch.device("cpu"), jit=False, channels_last=False, autocast=None)
    preprocess = Preprocessor(spec.preprocess)
    pixels = torch.stack([preprocess(decode_image(path.read_bytes(), 10**8)) for path in photos])
    with torch.inference_mode():
        predicted = loaded.module(pixels).argmax(1).tolist()
    assert [labels[index] for index in predicted] == list(photos.values())
