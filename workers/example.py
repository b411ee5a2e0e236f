"""``python -m workers.example [FOLDER]``: a classifier of your own, made offline in seconds.
The default backbone with a head trained on the bundled photos, as a model folder (``make example``)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from common.repository import EXPORT_FILE, LABELS_FILE, TOML_FILE
from deploy.stack import ROOT
from workers.model import LITE0_PREPROCESS, load_lite0
from workers.preprocess import Preprocessor

__all__ = ["CORPUS", "build", "corpus_photos"]

#: The bundled photos: ``<subject>_<size>...`` names.
CORPUS = ROOT / "loadtest" / "corpus"
_SUBJECT = re.compile(r"(.+?)_\d+")
#: Random views of each photo the head is trained on, its training steps, the largest batch exported.
_VIEWS, _STEPS, _MAX_BATCH = 12, 300, 256
_TOML = ('description = "efficientnet_lite0 with a head trained on the bundled photos"\n\n[preprocess]\n'
         + "".join(f"{key} = {json.dumps(v)}\n" for key, v in dataclasses.asdict(LITE0_PREPROCESS).items()))


def corpus_photos(corpus: Path = CORPUS) -> dict[Path, str]:
    """Each bundled photo and its subject, the label it is trained to."""
    matches = {path: _SUBJECT.match(path.name) for path in sorted(corpus.iterdir())}
    return {path: m.group(1) for path, m in matches.items() if m and path.suffix in (".jpg", ".png")}


def build(folder: Path, corpus: Path = CORPUS, seed: int = 0) -> list[str]:
    """Train the head and write the model folder; its labels, in output order."""
    photos = corpus_photos(corpus)
    labels = sorted(set(photos.values()))
    module: Any = load_lite0()[0].eval().requires_grad_(False)  # a timm model: forward_head...
    preprocess = Preprocessor(LITE0_PREPROCESS)
    augment = v2.Compose([v2.RandomResizedCrop(LITE0_PREPROCESS.input_size, scale=(0.4, 1.0), antialias=True),
                          v2.RandomHorizontalFlip(), v2.ColorJitter(0.3, 0.3, 0.3)])
    torch.manual_seed(seed)  # the views and the head's initial weights
    inputs, targets = [], []
    for path, label in photos.items():  # the served view (the centre crop), and random ones
        with Image.open(path) as image:
            pixels = v2.functional.pil_to_tensor(image.convert("RGB"))
        views = [pixels, *(augment(pixels) for _ in range(_VIEWS - 1))]
        inputs += [preprocess.tensor(view) for view in views]
        targets += [labels.index(label)] * _VIEWS
    with torch.inference_mode():
        features = module.forward_head(module.forward_features(torch.stack(inputs)), pre_logits=True)
    head = nn.Linear(features.shape[1], len(labels))
    optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
    target = torch.tensor(targets)
    features = features.clone()
    for _ in range(_STEPS):
        optimizer.zero_grad()
        nn.functional.cross_entropy(head(features), target).backward()
        optimizer.step()
    module.reset_classifier(len(labels))
    module.get_classifier().load_state_dict(head.state_dict())
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    size = LITE0_PREPROCESS.input_size
    program = torch.export.export(module.eval(), (torch.zeros(2, 3, size, size),),
                                  dynamic_shapes=({0: batch},))
    folder.mkdir(parents=True, exist_ok=True)
    torch.export.save(program, folder / EXPORT_FILE)
    (folder / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels))
    (folder / TOML_FILE).write_text(_TOML)
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.example", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, nargs="?", default=ROOT / "models" / "photos",
                        help="the model folder to write (default: models/photos)")
    args = parser.parse_args(argv)
    labels = build(args.folder)
    print(f"wrote {args.folder}: {EXPORT_FILE}, {LABELS_FILE} ({len(labels)} labels: {', '.join(labels)}), "
          f"{TOML_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
