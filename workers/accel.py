"""How a worker uses its device: a CUDA-only setting on the CPU is a ConfigError, never a silent fallback.
On CUDA, batches are pinned and copied on a side stream, so a copy does not queue behind the last kernels."""
from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from common.config import ConfigError

__all__ = ["DTYPES", "AccelConfig", "Accelerator"]

#: ``PRECISION`` (resolved) -> the dtype autocast computes in; None: float32 throughout.
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class AccelConfig:
    """``PRECISION``, ``GPU_DECODE`` and batch mode (cuDNN's autotuner pays off over its sizes)."""

    precision: str = "auto"
    gpu_decode: bool = False
    batch_mode: bool = False


class Accelerator:
    """:class:`AccelConfig` applied to ``device``; a :class:`ConfigError` if it cannot apply there."""

    def __init__(self, config: AccelConfig, device: torch.device) -> None:
        self.device, self.is_cuda, self.gpu_decode = device, device.type == "cuda", config.gpu_decode
        precision = config.precision
        if precision == "auto":
            precision = "fp16" if self.is_cuda else "fp32"
        fix = "(or DEVICE=cuda on a machine with a GPU)"
        if not self.is_cuda and precision != "fp32":
            raise ConfigError(f"PRECISION={precision} needs a CUDA device, but the worker runs on {device}; "
                              f"set PRECISION=fp32 or auto {fix}")
        if not self.is_cuda and config.gpu_decode:
            raise ConfigError(f"GPU_DECODE=true needs a CUDA device, but the worker runs on {device}; "
                              f"set GPU_DECODE=false {fix}")
        if self.is_cuda and precision == "bf16" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"PRECISION=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16 "
                              "support; use PRECISION=fp16")
        #: The resolved precision and the dtype autocast computes in (None: off).
        self.precision, self.dtype = precision, DTYPES[precision]
        self.cudnn_benchmark = self.is_cuda and config.batch_mode
        # Made in setup(), so in each prefork child: CUDA state does not survive a fork.
        self._copy_stream: Any = torch.cuda.Stream(device) if self.is_cuda else None
        self._local = threading.local()

    def describe(self) -> str:
        """What is in force on this device, for the start-up log."""
        if not self.is_cuda:
            return "precision=fp32 channels_last=True"
        return (f"precision={self.precision} channels_last=True pinned copies on a side stream "
                f"cudnn_benchmark={self.cudnn_benchmark} gpu_decode={self.gpu_decode}")

    def configure_backends(self) -> None:
        """Process-wide switches: cuDNN's autotuner (only when CUDA is the device)."""
        if self.is_cuda:
            torch.backends.cudnn.benchmark = self.cudnn_benchmark

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context for the forward pass: ``torch.autocast`` on the device, or nothing."""
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def stack(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """One batch from CHW tensors: pinned when bound for CUDA, on the device if decoded there."""
        if not self.is_cuda:
            return torch.stack(list(inputs))
        if any(t.device.type == "cuda" for t in inputs):
            stream = torch.cuda.current_stream(self.device)
            for tensor in inputs:
                if tensor.device.type == "cuda":
                    # Made on a decode thread's stream: keep its memory until this stream used it.
                    tensor.record_stream(stream)
            return torch.stack([t.to(self.device) for t in inputs])
        # Stacked straight into pinned pages: one host copy, and the upload can be async.
        out = torch.empty((len(inputs), *inputs[0].shape), dtype=inputs[0].dtype, pin_memory=True)
        return torch.stack(list(inputs), out=out)

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` on the device, channels-last; a no-op when it already is."""
        if not self.is_cuda or batch.device.type == "cuda":
            return batch.to(self.device, memory_format=torch.channels_last)
        compute, side = torch.cuda.current_stream(self.device), self._copy_stream
        with torch.cuda.stream(side):
            moved = batch.to(self.device, non_blocking=batch.is_pinned(), memory_format=torch.channels_last)
            copied = side.record_event()
        compute.wait_event(copied)  # the GPU waits for the copy; the host does not
        moved.record_stream(compute)  # allocated on the side stream, used on this one
        return moved

    @contextlib.contextmanager
    def decode_stream(self) -> Iterator[None]:
        """Run the block's CUDA work on this thread's own stream and wait for it at the end."""
        if not self.is_cuda:
            yield
            return
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(stream):
            yield
        stream.synchronize()
