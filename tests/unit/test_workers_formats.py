"""Loading each repository format (``workers.formats``) with tiny nets built here, on the CPU."""
from __future__ import annotations

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
from workers.exceptions import ModelLoadError
from workers.formats import load_spec

pytestmark = pytest.mark.unit

CPU = torch.device("cpu")


def batch(size: int = 3, channels_last: bool = False) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(size, 3, INPUT_SIZE, INPUT_SIZE)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def expected(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ColourNet().eval()(x)


@pytest.mark.parametrize("channels_last", [False, True])
def test_a_program_with_a_dynamic_batch(tmp_path: Path, channels_last: bool) -> None:
    write_export(write_folder(tmp_path / "m"))
    loaded = load_spec(read_model(tmp_path / "m"), CPU)
    x = batch(channels_last=channels_last)
    assert torch.allclose(loaded.module(x), expected(x), atol=1e-5)
    assert loaded.class_names == COLOURS and loaded.preprocess.input_size == INPUT_SIZE


def test_a_program_for_batch_one_runs_image_by_image(tmp_path: Path) -> None:
    write_export(write_folder(tmp_path / "m", toml=""), dynamic=False)
    loaded = load_spec(read_model(tmp_path / "m"), CPU)
    x = batch(5)
    assert torch.allclose(loaded.module(x), expected(x), atol=1e-5)
    # Without [preprocess], the program's own fixed input size.
    assert loaded.preprocess.input_size == INPUT_SIZE


def test_a_program_for_a_larger_fixed_batch_is_refused_with_the_fix(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "m")
    program = torch.export.export(ColourNet().eval(), (batch(2),))
    torch.export.save(program, folder / "model.pt2")
    with pytest.raises(ModelLoadError, match="exported for batch size 2 only.*Dim"):
        load_spec(read_model(folder), CPU)


def test_a_torchscript_file(tmp_path: Path) -> None:
    write_script(write_folder(tmp_path / "m"))
    loaded = load_spec(read_model(tmp_path / "m"), CPU)
    x = batch()
    assert torch.allclose(loaded.module(x), expected(x), atol=1e-5)


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


def test_a_labels_count_that_does_not_match_names_both(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "m", labels=("one", "two"))
    write_export(folder)
    with pytest.raises(ModelLoadError) as caught:
        load_spec(read_model(folder), CPU)
    message = str(caught.value)
    assert "3 outputs" in message and "2 labels" in message and str(folder / "labels.txt") in message


@pytest.mark.parametrize("writer", [write_export, write_script])
def test_a_truncated_file_names_itself(tmp_path: Path, writer: object) -> None:
    folder = write_folder(tmp_path / "m")
    path: Path = writer(folder)  # type: ignore[operator]
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ModelLoadError, match=f"Cannot read {path}"):
        load_spec(read_model(folder), CPU)


def test_a_state_dict_that_does_not_fit(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "m", toml='architecture = "resnet34"\nweights = "weights.pth"\n'
                                               + PREPROCESS_TOML)
    write_state_dict(folder, "resnet18")
    with pytest.raises(ModelLoadError, match="does not fit resnet34 with 3 outputs"):
        load_spec(read_model(folder), CPU)


def test_an_unknown_architecture(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "m", toml='architecture = "resnet_9000"\nweights = "w.pth"\n')
    (folder / "w.pth").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="unknown architecture 'resnet_9000'"):
        load_spec(read_model(folder), CPU)


def test_a_wrong_input_size_says_where_to_fix_it(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "m", toml="[preprocess]\ninput_size = 64\n")
    program = torch.export.export(ColourNet().eval(), (batch(2),),
                                  dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
    torch.export.save(program, folder / "model.pt2")
    with pytest.raises(ModelLoadError, match="input_size in model.toml"):
        load_spec(read_model(folder), CPU)
