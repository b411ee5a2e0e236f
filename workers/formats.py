"""Load a repository model (``common.repository.ModelSpec``) in whichever format it ships.

* ``export``: a ``torch.export`` program (``model.pt2``). Its batch dimension should be
  dynamic; one exported for batch 1 runs image by image, one for a larger fixed batch is
  refused with how to export it. Without ``[preprocess]``, a program with a fixed square
  input takes that size.
* ``torchscript``: ``model.pt``, still loadable though the pinned torch deprecates it.
* ``architecture``: a torchvision or timm name built with as many outputs as there are
  labels, filled with the folder's state dict (``efficientnet_lite0`` without one: the
  packaged ImageNet weights).

Every load ends with one forward pass that checks the outputs against ``labels.txt``:
a mismatch is a :class:`ModelLoadError` naming both numbers and both files, so a worker
never answers with the wrong names.
"""
from __future__ import annotations

import dataclasses
import logging
import warnings

import torch
from torch import nn

from common.repository import ModelSpec, PreprocessConfig
from workers.exceptions import ModelLoadError
from workers.model import (
    _LITE0_ARCH,
    LoadedModel,
    _load_lite0,
    _read_state_dict,
    freeze_for_inference,
    imagenet_categories,
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
        module = _load_architecture(spec)
        module.requires_grad_(False)
        module = module.to(device).eval()
        if channels_last:
            module = module.to(memory_format=torch.channels_last)
        if jit:
            module = freeze_for_inference(module, preprocess.input_size, device, channels_last=channels_last,
                                          autocast=autocast)
    _check_outputs(spec, module, preprocess, device)
    labels = spec.labels if spec.labels is not None else imagenet_categories()
    source = str(spec.network_file) if spec.network_file else "the architecture's packaged weights"
    return LoadedModel(spec.name, module, device, preprocess, labels, source)


def _load_export(spec: ModelSpec) -> tuple[nn.Module, PreprocessConfig]:
    path = spec.folder / "model.pt2"
    try:
        program = torch.export.load(path)
    except Exception as exc:  # zip, JSON and deserialisation errors alike
        raise ModelLoadError(f"Cannot read {path}: {exc!r}; re-export it with torch.export.save") from exc
    shape = _input_shape(program)
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


def _input_shape(program: torch.export.ExportedProgram) -> tuple[int | torch.SymInt, ...]:
    """The first user input's shape: ints where fixed, symbols where dynamic; () if unknown."""
    names = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            value = node.meta.get("val")
            return tuple(value.shape) if value is not None else ()
    return ()


def _load_script(spec: ModelSpec, device: torch.device) -> nn.Module:
    path = spec.folder / "model.pt"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the pinned torch deprecates TorchScript at every load
            module = torch.jit.load(str(path), map_location=device).eval()
    except Exception as exc:  # a truncated or foreign file
        raise ModelLoadError(f"Cannot read {path}: {exc!r}; save it again with torch.jit.save") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
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
        return _load_lite0(None)[0]  # the built-in default's own loading, packaged weights
    if weights is None:
        raise ModelLoadError(f"{spec.folder}: architecture {name} needs its weights: set weights = "
                             "\"file.pth\" in model.toml (this worker never downloads)")
    if name == "efficientnet_lite0":
        import timm

        module = timm.create_model(_LITE0_ARCH, pretrained=False, num_classes=classes)
    else:
        module = _build(name, classes, spec)
    try:
        module.load_state_dict(_read_state_dict(weights))
    except RuntimeError as exc:
        raise ModelLoadError(f"{weights} does not fit {name} with {classes} outputs: {exc}. Save the state "
                             f"dict of the fine-tuned {name} (model.state_dict()) there") from exc
    return module


def _build(name: str, classes: int, spec: ModelSpec) -> nn.Module:
    import timm
    from torchvision import models

    if name in models.list_models(module=models):
        return models.get_model(name, weights=None, num_classes=classes)
    if timm.is_model(name):
        return timm.create_model(name, pretrained=False, num_classes=classes)
    raise ModelLoadError(f"{spec.folder}: unknown architecture {name!r}: use a torchvision classification "
                         "model (torchvision.models.list_models()) or a timm one (timm.list_models())")


def _check_outputs(spec: ModelSpec, module: nn.Module, preprocess: PreprocessConfig,
                   device: torch.device) -> None:
    size = preprocess.input_size
    try:
        with torch.inference_mode():
            output = module(torch.zeros(1, 3, size, size, device=device))
    except Exception as exc:  # the program's guards, a shape error...
        raise ModelLoadError(f"{spec.network_file or spec.folder} fails on a 1 x 3 x {size} x {size} input: "
                             f"{exc!r}; is [preprocess] input_size in model.toml the size it was trained "
                             "at?") from exc
    outputs = output.shape[-1] if isinstance(output, torch.Tensor) and output.dim() == 2 else None
    if outputs is None:
        raise ModelLoadError(f"{spec.network_file or spec.folder} must return N x classes logits, returned "
                             f"{getattr(output, 'shape', type(output).__name__)}")
    if outputs != spec.num_labels:
        raise ModelLoadError(f"{spec.network_file or spec.folder} has {outputs} outputs but "
                             f"{spec.labels_file or 'the ImageNet labels'} has {spec.num_labels} labels: "
                             "write one label per output, in order")
