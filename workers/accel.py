"""Device policy: how a worker uses its device, from the ``AUTOCAST``, ``CHANNELS_LAST``,
``PIN_MEMORY``, ``CUDNN_BENCHMARK``, ``GPU_DECODE`` and ``CUDA_COPY_STREAM`` settings.

:class:`AccelConfig` holds the settings; :class:`Accelerator` applies them to one
resolved device, and is what ``workers.handler`` and ``workers.model`` call.

On the CPU, the rule is: a setting that selects a CUDA-only code path, and would
change what runs (``AUTOCAST=fp16|bf16``, ``GPU_DECODE=true``), is a
:class:`ConfigError` (the worker refuses to start, naming the variable), never a
silent fallback; a setting that only tunes how CUDA work is scheduled
(``PIN_MEMORY``, ``CUDNN_BENCHMARK``, ``CUDA_COPY_STREAM``) is a no-op.
``CHANNELS_LAST`` applies to both (measured faster on the CPU too: workers.model).

Overlap of batch k+1's preparation with batch k's forward pass, as it stands:

* decoding and preprocessing run per request on the batching consumer's decode threads
  as requests arrive, so they already overlap the batch in flight (on the CPU, or with
  ``GPU_DECODE`` on the GPU in a per-thread side stream that the decode thread alone waits
  for);
* ``batch`` (stack, pin, copy to the device) and ``predict`` run on a pool thread, and
  with ``WORKER_CONCURRENCY`` >= 2 another pool thread prepares batch k+1 while batch k
  runs. On CUDA every thread issues work to the device's default stream, so that copy
  would queue behind batch k's kernels: ``CUDA_COPY_STREAM`` issues it on a side stream
  instead, and only the forward pass waits for it (an event, no host sync).
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from common.config import ConfigError, WorkerSettings

__all__ = ["AUTOCAST_DTYPES", "AccelConfig", "Accelerator"]

logger = logging.getLogger(__name__)

#: ``AUTOCAST`` value -> the dtype autocast computes in (None: off, float32 throughout); the
#: keys are ``common.config.AUTOCAST_MODES`` (a test keeps them equal).
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class AccelConfig:
    """How to use the device; the defaults are the worker's defaults (neutral on the CPU)."""

    #: ``off``, ``fp16`` or ``bf16`` (``AUTOCAST``).
    autocast: str = "off"
    #: Model and batches in channels-last memory format (``CHANNELS_LAST``).
    channels_last: bool = True
    #: CUDA: pinned host batch, ``non_blocking`` copy (``PIN_MEMORY``).
    pin_memory: bool = True
    #: CUDA: ``torch.backends.cudnn.benchmark`` (``CUDNN_BENCHMARK``).
    cudnn_benchmark: bool = False
    #: CUDA: JPEGs decoded by nvJPEG (``GPU_DECODE``).
    gpu_decode: bool = False
    #: CUDA: host-to-device copies on a side stream (``CUDA_COPY_STREAM``).
    copy_stream: bool = False

    def __post_init__(self) -> None:
        if self.autocast not in AUTOCAST_DTYPES:
            raise ValueError(f"autocast must be one of {', '.join(AUTOCAST_DTYPES)}; got {self.autocast!r}")
        for item in fields(self):
            if item.name != "autocast" and not isinstance(getattr(self, item.name), bool):
                raise ValueError(f"{item.name} must be True or False; got {getattr(self, item.name)!r}")

    @classmethod
    def from_settings(cls, settings: WorkerSettings) -> AccelConfig:
        """The worker's variables, as read by ``common.config``."""
        return cls(autocast=settings.autocast, channels_last=settings.channels_last,
                   pin_memory=settings.pin_memory, cudnn_benchmark=settings.cudnn_benchmark,
                   gpu_decode=settings.gpu_decode, copy_stream=settings.cuda_copy_stream)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The dtype autocast computes in, None when off."""
        return AUTOCAST_DTYPES[self.autocast]

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


class Accelerator:
    """:class:`AccelConfig` applied to ``device``; a :class:`ConfigError` if it cannot apply there."""

    def __init__(self, config: AccelConfig, device: torch.device) -> None:
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, not {type(config).__name__}")
        if not isinstance(device, torch.device):
            raise TypeError(f"device must be a torch.device (see resolve_device), "
                            f"not {type(device).__name__}")
        self.config = config
        self.device = device
        self.is_cuda = device.type == "cuda"
        _check(config, device)
        self._lock = threading.Lock()
        self._copy_stream: Any = None
        self._local = threading.local()

    def describe(self) -> str:
        """The settings in force on this device, for the start-up log."""
        config = self.config
        if not self.is_cuda:
            return (f"autocast=off channels_last={config.channels_last} (pin_memory, cudnn_benchmark, "
                    "copy_stream: CUDA only, no-ops here)")
        return (f"autocast={config.autocast} channels_last={config.channels_last} "
                f"pin_memory={config.pin_memory} cudnn_benchmark={config.cudnn_benchmark} "
                f"gpu_decode={config.gpu_decode} copy_stream={config.copy_stream}")

    def configure_backends(self) -> None:
        """Process-wide switches: cuDNN's autotuner (only when CUDA is the device)."""
        if self.is_cuda:
            torch.backends.cudnn.benchmark = self.config.cudnn_benchmark

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Context for the forward pass: ``torch.autocast`` on the device, or nothing."""
        dtype = self.config.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def stack(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """One batch from preprocessed CHW tensors: in pinned host memory when it will be
        copied to CUDA, on the device when they were decoded there (``GPU_DECODE``)."""
        if not inputs:
            raise ValueError("stack() needs at least one input")
        if self.is_cuda and any(t.device.type == "cuda" for t in inputs):
            stream = torch.cuda.current_stream(self.device)
            for tensor in inputs:
                if tensor.device.type == "cuda":
                    # Made on a decode thread's stream: keep its memory until this stream used it.
                    tensor.record_stream(stream)
            return torch.stack([t.to(self.device) for t in inputs])
        first = inputs[0]
        if self.is_cuda and self.config.pin_memory:
            # Stacked straight into pinned pages: one host copy, and the upload can be async.
            out = torch.empty((len(inputs), *first.shape), dtype=first.dtype, pin_memory=True)
            return torch.stack(list(inputs), out=out)
        return torch.stack(list(inputs))

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """``batch`` on the device in the model's memory format; a no-op when it already is."""
        memory_format = self.config.memory_format
        if not self.is_cuda or batch.device.type == "cuda":
            return batch.to(self.device, memory_format=memory_format)
        non_blocking = self.config.pin_memory and batch.is_pinned()
        side = self._side_copy_stream()
        if side is None:
            return batch.to(self.device, non_blocking=non_blocking, memory_format=memory_format)
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(side):
            moved = batch.to(self.device, non_blocking=non_blocking, memory_format=memory_format)
            copied = side.record_event()
        compute.wait_event(copied)  # the GPU waits for the copy; the host does not
        moved.record_stream(compute)  # allocated on the side stream, used on this one
        return moved

    @contextlib.contextmanager
    def decode_stream(self) -> Iterator[None]:
        """Run the block's CUDA work on this thread's own stream and wait for it at the end,
        so GPU decoding neither queues behind the forward pass nor makes it wait."""
        if not self.is_cuda:
            yield
            return
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(stream):
            yield
        stream.synchronize()

    def _side_copy_stream(self) -> Any:
        if not self.config.copy_stream:
            return None
        with self._lock:
            if self._copy_stream is None:
                self._copy_stream = torch.cuda.Stream(self.device)
            return self._copy_stream


def _check(config: AccelConfig, device: torch.device) -> None:
    """Refuse CUDA-only code paths on another device, naming the variable to change."""
    if device.type != "cuda":
        if config.autocast != "off":
            raise ConfigError(f"AUTOCAST={config.autocast} needs a CUDA device, but the worker runs on "
                              f"{device}; set AUTOCAST=off (or DEVICE=cuda on a machine with a GPU)")
        if config.gpu_decode:
            raise ConfigError(f"GPU_DECODE=true needs a CUDA device, but the worker runs on {device}; "
                              "set GPU_DECODE=false (or DEVICE=cuda on a machine with a GPU)")
        return
    if config.autocast == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"AUTOCAST=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16 "
                          "support; use AUTOCAST=fp16")
