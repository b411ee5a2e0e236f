"""Tiny classifiers written as repository folders, in each format the workers load."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

__all__ = ["COLOURS", "INPUT_SIZE", "PREPROCESS_TOML", "ColourNet", "write_export", "write_folder",
           "write_script", "write_state_dict"]

#: ColourNet's labels, in output order.
COLOURS = ("red", "green", "blue")
#: The tiny models' input (a model.toml says so; their networks take any size).
INPUT_SIZE = 32
PREPROCESS_TOML = f"[preprocess]\ninput_size = {INPUT_SIZE}\nresize_size = {INPUT_SIZE}\n"


class ColourNet(nn.Module):
    """Logits are the normalised channel means: a pure red picture is class 0, green 1, blue 2."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 3)
        with torch.no_grad():
            self.head.weight.copy_(torch.eye(3))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean(dim=(2, 3)))


def write_folder(folder: Path, labels: tuple[str, ...] = COLOURS, toml: str = PREPROCESS_TOML) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labels.txt").write_text("".join(f"{label}\n" for label in labels))
    (folder / "model.toml").write_text(toml)
    return folder


def _example(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, INPUT_SIZE, INPUT_SIZE)


def write_export(folder: Path, net: nn.Module | None = None, *, fixed_batch: int | None = None) -> Path:
    """``model.pt2``: ``net`` (a ColourNet) exported with a dynamic batch dimension, or a fixed one."""
    model = (net or ColourNet()).eval()
    example = (_example(fixed_batch or 2),)
    shapes = None if fixed_batch else {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}
    program = torch.export.export(model, example, dynamic_shapes=shapes)
    path = folder / "model.pt2"
    torch.export.save(program, path)
    return path


def write_script(folder: Path, net: nn.Module | None = None) -> Path:
    """``model.pt``: ``net`` (a ColourNet) traced to TorchScript (``jit.script`` fails on a module
    class that ``torch.export`` has already seen in this process)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that TorchScript is deprecated
        scripted = torch.jit.trace((net or ColourNet()).eval(), _example())
        path = folder / "model.pt"
        torch.jit.save(scripted, str(path))
    return path


def write_state_dict(folder: Path, architecture: str = "resnet18", classes: int = 3,
                     seed: int = 0) -> nn.Module:
    """``weights.pth`` of a torchvision ``architecture`` with ``classes`` outputs; the eager model."""
    from torchvision import models

    torch.manual_seed(seed)
    model = models.get_model(architecture, weights=None, num_classes=classes).eval()
    torch.save(model.state_dict(), folder / "weights.pth")
    return model
