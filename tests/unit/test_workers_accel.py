"""workers.accel: PRECISION and GPU_DECODE, what the device derives from them on the CPU (everywhere)
and on CUDA (where a GPU exists; the classifier on CUDA: test_workers_handler.py)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from common.config import ConfigError
from workers.accel import DTYPES, AccelConfig, Accelerator
from workers.handler import ImageClassifier

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture
def cudnn_benchmark() -> Iterator[None]:
    """Restores the process-wide cuDNN switch a test changes."""
    before = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = before


@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_on_the_cpu_all_is_float32_channels_last_and_unpinned(precision: str, cudnn_benchmark: None) -> None:
    torch.backends.cudnn.benchmark = False
    accelerator = Accelerator(AccelConfig(precision, batch_mode=True), CPU)
    assert (accelerator.precision, accelerator.dtype, accelerator.cudnn_benchmark) == ("fp32", None, False)
    accelerator.configure_backends()
    assert torch.backends.cudnn.benchmark is False
    stacked = accelerator.stack([torch.rand(3, 8, 8), torch.rand(3, 8, 8)])
    assert stacked.shape == (2, 3, 8, 8) and not stacked.is_pinned()
    moved = accelerator.to_device(stacked)
    assert moved.device == CPU and moved.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(moved, stacked)
    with accelerator.decode_stream(), accelerator.autocast():
        assert (torch.rand(4, 4) @ torch.rand(4, 4)).dtype is torch.float32
    assert accelerator.describe() == "precision=fp32 channels_last=True"
    assert DTYPES["fp16"] is torch.float16 and DTYPES["bf16"] is torch.bfloat16


@pytest.mark.parametrize(("config_", "named"), [
    (AccelConfig("fp16"), "PRECISION=fp16"), (AccelConfig("bf16"), "PRECISION=bf16"),
    (AccelConfig(gpu_decode=True), "GPU_DECODE=true"),
])
def test_cuda_only_code_paths_are_refused_on_the_cpu_before_loading_a_model(config_: AccelConfig,
                                                                             named: str) -> None:
    with pytest.raises(ConfigError, match=f"{named} needs a CUDA device"):
        Accelerator(config_, CPU)
    handler = ImageClassifier(device="cpu", accel=config_)
    with pytest.raises(ConfigError, match=named):
        handler.ensure_setup()
    assert handler.model is None


# -- on CUDA ---------------------------------------------------------------------

@pytest.mark.gpu
@needs_cuda
def test_cuda_defaults_pin_copy_on_a_side_stream_and_autotune_in_batch_mode(cudnn_benchmark: None) -> None:
    device = torch.device("cuda")
    accelerator = Accelerator(AccelConfig(batch_mode=True), device)
    assert (accelerator.precision, accelerator.dtype, accelerator.cudnn_benchmark) == ("fp16", torch.half, 1)
    accelerator.configure_backends()
    assert torch.backends.cudnn.benchmark is True
    Accelerator(AccelConfig(), device).configure_backends()
    assert torch.backends.cudnn.benchmark is False  # individual mode: shapes vary less, no autotuning
    inputs = [torch.rand(3, 16, 16) for _ in range(3)]
    stacked = accelerator.stack(inputs)
    assert stacked.is_pinned() and torch.equal(stacked, torch.stack(inputs))
    moved = accelerator.to_device(stacked)
    assert moved.device.type == "cuda" and moved.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(moved.cpu(), torch.stack(inputs))
    a = torch.rand(8, 8, device=device)
    with accelerator.autocast():
        assert (a @ a).dtype is torch.float16
    default = torch.cuda.default_stream(device)
    with accelerator.decode_stream():
        assert torch.cuda.current_stream(device) != default
    assert torch.cuda.current_stream(device) == default
    assert Accelerator(AccelConfig("fp32"), device).dtype is None
