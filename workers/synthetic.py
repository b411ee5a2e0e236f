"""BENCHMARK stand-ins, never defaults (``MODEL=null``, ``MODEL=simulated``): the stack without the model."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["NullClassifier", "SimulatedAccelerator", "SimulatedCost"]


@dataclass(frozen=True)
class SimulatedCost:
    """A batch of ``n`` images takes ``batch_ms + item_ms * n`` (``SIMULATED_BATCH_MS``, ``_ITEM_MS``)."""

    batch_ms: float = 20.0
    item_ms: float = 2.0

    def seconds(self, batch_size: int) -> float:
        return (self.batch_ms + self.item_ms * batch_size) / 1000.0


class NullClassifier(nn.Module):
    """BENCHMARK MODEL (``MODEL=null``): ``W @ avgpool(x) + b``, ``W`` seeded, so every process agrees."""

    #: Side of the average-pooling grid: 3 x 4 x 4 = 48 features per image.
    GRID = 4
    #: TorchScript may trace and freeze it.
    jit_safe = True
    #: The fixed map (buffers: they move with ``.to(device)`` and freeze into constants).
    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, num_classes: int = 1000, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        # Scaled so logits of a normalised photo spread over a few units: a peaked softmax.
        self.register_buffer("weight", torch.randn(num_classes, 3 * self.GRID**2, generator=generator) * 4.0)
        self.register_buffer("bias", torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.adaptive_avg_pool2d(x, self.GRID).flatten(1), self.weight, self.bias)


class SimulatedAccelerator(NullClassifier):
    """BENCHMARK DEVICE (``MODEL=simulated``): NullClassifier after a GIL-free sleep, callers queued."""

    #: The sleep is Python: tracing would run it once and drop it from the graph.
    jit_safe = False

    def __init__(self, cost: SimulatedCost | None = None, sleep: Callable[[float], None] = time.sleep,
                 num_classes: int = 1000, seed: int = 0) -> None:
        super().__init__(num_classes, seed)
        self.cost, self.sleep = cost or SimulatedCost(), sleep
        self._device = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._device:
            self.sleep(self.cost.seconds(int(x.shape[0])))
        return super().forward(x)
