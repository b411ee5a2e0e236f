"""Load a repository model in its format; a forward pass at load checks outputs against ``labels.txt``."""
from __future__ import annotations

import dataclasses
import logging
import warnings

import torch
from torch import nn

from common.repository import ModelSpec, PreprocessConfig
from workers.model import (
    LITE0_ARCH,
    LoadedModel,
    ModelLoadError,
    imagenet_categories,
    load_lite0,
    load_state_dict,
    prepare,
)

__all__ = ["load_spec"]

logger = logging.getLogger(__name__)

_EXPORT_HOWTO = ('export it with a dynamic batch: torch.export.export(model, (x,), dynamic_shapes={"x": '
                 '{0: torch.export.Dim("batch", min=1)}}), then torch.export.save(program, "model.pt2")')


class OneByOne(nn.Module):
    """Runs a program exported for batch 1 on each image of a batch in turn."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = module

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.inner(image.unsqueeze(0)) for image in batch.unbind(0)])


def load_spec(spec: ModelSpec, device: torch.device, *, jit: bool = False, channels_last: bool = True,
              autocast: torch.dtype | None = None) -> LoadedModel:
    """Load ``spec``'s network on ``device`` in eval mode, checked against its labels."""
    preprocess = spec.preprocess
    if spec.format == "export":
        module, preprocess = _load_export(spec)
        module = module.to(device)
    elif spec.format == "torchscript":
        module = _load_script(spec, device)
    else:
        module = prepare(_load_architecture(spec), device, preprocess.input_size, jit=jit,
                         channels_last=channels_last, autocast=autocast)
    _check_outputs(spec, module, preprocess, device)
    labels = spec.labels if spec.labels is not None else imagenet_categories()
    source = str(spec.network_file) if spec.network_file else "the architecture's packaged weights"
    return LoadedModel(spec.name, module, device, preprocess, labels, source)


def _load_export(spec: ModelSpec) -> tuple[nn.Module, PreprocessConfig]:
    """The program, and without ``[preprocess]`` its own fixed square input size."""
    path = spec.folder / "model.pt2"
    try:
        program = torch.export.load(path)
    except Exception as exc:  # zip, JSON and deserialisation errors alike
        raise ModelLoadError(f"Cannot read {path}: {exc!r}; re-export it with torch.export.save") from exc
    inputs = set(program.graph_signature.user_inputs)
    value = next((node.meta.get("val") for node in program.graph.nodes
                  if node.op == "placeholder" and node.name in inputs), None)
    shape = tuple(value.shape) if value is not None else ()  # ints where fixed, symbols where dynamic
    module: nn.Module = program.module()
    batch = shape[0] if shape else None
    if isinstance(batch, int) and batch > 1:
        raise ModelLoadError(f"{path} was exported for batch size {batch} only; {_EXPORT_HOWTO}")
    if batch == 1:
        logger.warning("%s was exported for batch size 1: each image runs alone (%s)", path, _EXPORT_HOWTO)
        module = OneByOne(module)
    preprocess = spec.preprocess
    if not spec.preprocess_given and len(shape) == 4 and isinstance(shape[2], int) and shape[2] == shape[3]:
        side = shape[2]
        preprocess = dataclasses.replace(preprocess, input_size=side,
                                         resize_size=max(side, round(side / 0.875)))
    return module, preprocess


def _load_script(spec: ModelSpec, device: torch.device) -> nn.Module:
    path = spec.folder / "model.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pinned torch deprecates TorchScript at every load
        try:
            module = torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:  # a truncated or foreign file
            raise ModelLoadError(f"Cannot read {path}: {exc!r}; save it again with torch.jit.save") from exc
        try:
            return torch.jit.freeze(module)
        except Exception as exc:  # noqa: BLE001 - freezing is an optimisation: the loaded module works
            logger.info("Keeping %s unfrozen: %r", path, exc)
            return module


def _load_architecture(spec: ModelSpec) -> nn.Module:
    name, classes, weights = str(spec.architecture), spec.num_labels, spec.weights
    if name == "efficientnet_lite0" and weights is None:
        if classes != 1000:
            raise ModelLoadError(f"{spec.labels_file} has {classes} labels but the packaged "
                                 f"{name} weights have 1000 outputs; set weights = \"file.pth\"")
        return load_lite0()[0]  # the built-in default's own loading, packaged weights
    if weights is None:
        raise ModelLoadError(f"{spec.folder}: architecture {name} needs its weights: set weights = "
                             "\"file.pth\" in model.toml (this worker never downloads)")
    import timm
    from torchvision import models

    if name in models.list_models(module=models):
        module = models.get_model(name, weights=None, num_classes=classes)
    elif name == "efficientnet_lite0" or timm.is_model(name):
        module = timm.create_model(LITE0_ARCH if name == "efficientnet_lite0" else name, pretrained=False,
                                   num_classes=classes)
    else:
        raise ModelLoadError(f"{spec.folder}: unknown architecture {name!r}: use a torchvision classification"
                             " model (torchvision.models.list_models()) or a timm one (timm.list_models())")
    fix = f"Save the state dict of the fine-tuned {name} (model.state_dict()) there"
    load_state_dict(module, weights, fix, f"{name} with {classes} outputs")
    return module


def _check_outputs(spec: ModelSpec, module: nn.Module, preprocess: PreprocessConfig,
                   device: torch.device) -> None:
    size, network = preprocess.input_size, spec.network_file or spec.folder
    try:
        with torch.inference_mode():
            output = module(torch.zeros(1, 3, size, size, device=device))
    except Exception as exc:  # the program's guards, a shape error...
        raise ModelLoadError(f"{network} fails on a 1 x 3 x {size} x {size} input: {exc!r}; is [preprocess] "
                             "input_size in model.toml the size it was trained at?") from exc
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        raise ModelLoadError(f"{network} must return N x classes logits, returned "
                             f"{getattr(output, 'shape', type(output).__name__)}")
    if output.shape[-1] != spec.num_labels:
        labels = spec.labels_file or "the ImageNet labels"
        raise ModelLoadError(f"{network} has {output.shape[-1]} outputs but {labels} has {spec.num_labels} "
                             "labels: write one label per output, in order")
