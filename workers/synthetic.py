"""BENCHMARK stand-ins for a model, never defaults: ``MODEL=null`` and ``MODEL=simulated``.

They measure the serving stack (HTTP, queue, batching, decode, encode) apart from the
model's own cost, and their predictions are meaningless. Both take the real
preprocessed batch (N x 3 x 224 x 224, the default model's preprocessing) and return
ImageNet-sized logits (N x 1000), a deterministic function of the pixels:

* :class:`NullClassifier` (``MODEL=null``): a 4 x 4 average pool and a fixed linear map
  drawn from a seeded generator, about 0.2 MFLOP an image; traceable by TorchScript.
* :class:`SimulatedAccelerator` (``MODEL=simulated``): the same logits after sleeping
  ``a + b * n`` ms for a batch of n (``SIMULATED_BATCH_MS``, ``SIMULATED_ITEM_MS``),
  with the GIL released, as a call into an accelerator would. One simulated device per
  process: batches run one at a time, as kernels queued on one GPU do. Its sleep is
  Python, so it is never traced (``jit_safe = False``).
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["DEFAULT_BATCH_MS", "DEFAULT_ITEM_MS", "NullClassifier", "SimulatedAccelerator", "SimulatedCost"]

#: ``SIMULATED_BATCH_MS`` and ``SIMULATED_ITEM_MS`` defaults (common.config's table says the same).
DEFAULT_BATCH_MS = 20.0
DEFAULT_ITEM_MS = 2.0


@dataclass(frozen=True)
class SimulatedCost:
    """A simulated device's cost model: a batch of ``n`` images takes ``batch_ms + item_ms * n``."""

    batch_ms: float = DEFAULT_BATCH_MS
    item_ms: float = DEFAULT_ITEM_MS

    def __post_init__(self) -> None:
        for name in ("batch_ms", "item_ms"):
            number = getattr(self, name)
            if isinstance(number, bool) or not isinstance(number, (int, float)) or not (
                    0 <= number and math.isfinite(number)):
                raise ValueError(f"{name} must be a finite number of milliseconds >= 0, e.g. 2; "
                                 f"got {number!r}")

    def seconds(self, batch_size: int) -> float:
        """Time a batch of ``batch_size`` images takes, in seconds."""
        return (self.batch_ms + self.item_ms * batch_size) / 1000.0


class NullClassifier(nn.Module):
    """BENCHMARK MODEL, not a classifier: near-free logits that still depend on the image.

    ``logits = W @ avgpool4x4(x) + b`` with ``W`` drawn once from a generator seeded with
    ``seed``: every process, every load, gives the same answers for the same pixels, and
    different photos get different top-1 classes.
    """

    #: Side of the average-pooling grid: 3 x 4 x 4 = 48 features per image.
    GRID = 4
    #: TorchScript may trace and freeze it.
    jit_safe = True
    #: The fixed map (buffers: they move with ``.to(device)`` and freeze into constants).
    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, num_classes: int = 1000, seed: int = 0) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, e.g. 1000; got {num_classes!r}")
        features = 3 * self.GRID * self.GRID
        generator = torch.Generator().manual_seed(seed)
        # Scaled so logits of a normalised photo spread over a few units: a peaked softmax.
        self.register_buffer("weight", torch.randn(num_classes, features, generator=generator) * 4.0)
        self.register_buffer("bias", torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x, self.GRID).flatten(1)
        return F.linear(pooled, self.weight, self.bias)


class SimulatedAccelerator(NullClassifier):
    """BENCHMARK DEVICE: :class:`NullClassifier`'s logits after sleeping ``cost.seconds(n)``.

    ``sleep`` is called with the batch's whole duration (``time.sleep`` releases the
    GIL); tests replace it. A lock makes concurrent callers queue for the one device.
    """

    #: The sleep is Python: tracing would run it once and drop it from the graph.
    jit_safe = False

    def __init__(self, cost: SimulatedCost | None = None, sleep: Callable[[float], None] = time.sleep,
                 num_classes: int = 1000, seed: int = 0) -> None:
        super().__init__(num_classes, seed)
        if cost is not None and not isinstance(cost, SimulatedCost):
            raise TypeError(f"cost must be a SimulatedCost, not {type(cost).__name__}")
        if not callable(sleep):
            raise TypeError(f"sleep must be callable, e.g. time.sleep; got {sleep!r}")
        self.cost = cost or SimulatedCost()
        self.sleep = sleep
        self._device = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._device:
            self.sleep(self.cost.seconds(int(x.shape[0])))
        return super().forward(x)

    def extra_repr(self) -> str:
        return f"batch_ms={self.cost.batch_ms}, item_ms={self.cost.item_ms}"
