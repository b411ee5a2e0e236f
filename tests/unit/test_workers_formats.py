"""Loading each repository format (``workers.formats``) with tiny nets built here, on the CPU."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from common.repository import read_model
from tests.support.tiny_models import (
    COLOURS,
    INPUT_SIZE,
    PREPROCESS_TOML,
    ColourNet,
    write_export,
    write_folder,
    write_script,
    write_state_dict,
)
from workers.formats import load_spec
from workers.model import ModelLoadError

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")


def batch(size: int = 3, channels_last: bool = False) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(size, 3, INPUT_SIZE, INPUT_SIZE)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize(("writer", "dynamic", "channels_last"), [
    ("export", True, False), ("export", True, True), ("export", False, False), ("script", True, False)])
def test_a_program_or_a_torchscript_file(tmp_path: Path, writer: str, dynamic: bool, channels_last: bool,
                                         ) -> None:
    folder = write_folder(tmp_path / "m", toml=PREPROCESS_TOML if dynamic else "")
    (write_export(folder, fixed_batch=None if dynamic else 1) if writer == "export" else write_script(folder))
    loaded = load_spec(read_model(folder), CPU)
    x = batch(5, channels_last)  # a program exported for batch 1 runs image by image
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), ColourNet().eval()(x), atol=1e-5)
    # Without [preprocess], the program's own fixed input size.
    assert loaded.class_names == COLOURS and loaded.preprocess.input_size == INPUT_SIZE


@pytest.mark.parametrize("jit", [False, True])
def test_an_architecture_with_a_fine_tuned_state_dict(tmp_path: Path, jit: bool) -> None:
    folder = write_folder(tmp_path / "m", labels=("ant", "bee", "wasp"),
                          toml='architecture = "resnet18"\nweights = "weights.pth"\n' + PREPROCESS_TOML)
    eager = write_state_dict(folder)
    loaded = load_spec(read_model(folder), CPU, jit=jit)
    x = batch()
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), eager(x), atol=1e-4)
    assert loaded.class_names == ("ant", "bee", "wasp") and loaded.weights == str(folder / "weights.pth")


def _truncated(writer: Callable[[Path], Path]) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        path = writer(folder)
        path.write_bytes(path.read_bytes()[:200])
    return write


def _architecture(name: str) -> Callable[[Path], None]:
    def write(folder: Path) -> None:
        write_folder(folder, toml=f'architecture = "{name}"\nweights = "weights.pth"\n' + PREPROCESS_TOML)
        write_state_dict(folder, "resnet18")
    return write


@pytest.mark.parametrize(("write", "message"), [
    (lambda folder: write_export(folder, fixed_batch=2), "exported for batch size 2 only.*Dim"),
    (lambda folder: write_export(write_folder(folder, labels=("one", "two"))),
     r"m/model.pt2 has 3 outputs but \S+m/labels.txt has 2 labels"),
    (_truncated(write_export), r"Cannot read \S+m/model.pt2"),
    (_truncated(write_script), r"Cannot read \S+m/model.pt"),
    (_architecture("resnet34"), "does not fit resnet34 with 3 outputs"),
    (_architecture("resnet_9000"), "unknown architecture 'resnet_9000'"),
    (lambda folder: write_export(write_folder(folder, toml="[preprocess]\ninput_size = 64\n")),
     "input_size in model.toml"),
], ids=["fixed-batch", "labels-count", "truncated-export", "truncated-script", "misfit", "unknown", "size"])
def test_a_folder_that_cannot_serve_names_the_file_and_the_fix(
        tmp_path: Path, write: Callable[[Path], None], message: str) -> None:
    folder = write_folder(tmp_path / "m")
    write(folder)
    with pytest.raises(ModelLoadError, match=message):
        load_spec(read_model(folder), CPU)
