"""workers.accel: the GPU settings, parsed and validated; what each does on the CPU
(everywhere) and on CUDA (where a GPU exists)."""
from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from batching import SimpleRequest
from common import config
from common.config import ConfigError, WorkerSettings, load
from common.contract import CLASSIFY_BATCH_TASK
from workers.accel import AUTOCAST_DTYPES, AccelConfig, Accelerator
from workers.handler import ImageClassifier

CPU = torch.device("cpu")
CAT_CLASSES = {281, 282, 283, 284, 285}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


CHELSEA = _jpeg(skimage.data.chelsea())
COFFEE = _jpeg(skimage.data.coffee())


@pytest.fixture
def cudnn_benchmark() -> Iterator[None]:
    """Restores the process-wide cuDNN switch a test changes."""
    before = torch.backends.cudnn.benchmark
    yield
    torch.backends.cudnn.benchmark = before


# -- the settings --------------------------------------------------------------

def test_autocast_modes_are_the_configs() -> None:
    assert tuple(AUTOCAST_DTYPES) == config.AUTOCAST_MODES


def test_defaults_are_neutral_and_match_the_config_dataclass() -> None:
    settings = load(WorkerSettings, {})
    assert (settings.autocast, settings.channels_last, settings.pin_memory, settings.cudnn_benchmark,
            settings.gpu_decode, settings.cuda_copy_stream) == ("off", True, True, False, False, False)
    assert (settings.simulated_batch_ms, settings.simulated_item_ms) == (20.0, 2.0)
    assert AccelConfig.from_settings(settings) == AccelConfig()


def test_the_environment_reaches_the_accel_config() -> None:
    settings = load(WorkerSettings, {
        "AUTOCAST": "FP16", "CHANNELS_LAST": "off", "PIN_MEMORY": "false", "CUDNN_BENCHMARK": "on",
        "GPU_DECODE": "yes", "CUDA_COPY_STREAM": "1", "SIMULATED_BATCH_MS": "0", "SIMULATED_ITEM_MS": "0.5"})
    assert AccelConfig.from_settings(settings) == AccelConfig(
        autocast="fp16", channels_last=False, pin_memory=False, cudnn_benchmark=True, gpu_decode=True,
        copy_stream=True)
    assert (settings.simulated_batch_ms, settings.simulated_item_ms) == (0.0, 0.5)


@pytest.mark.parametrize(("name", "raw"), [
    ("AUTOCAST", "fp8"), ("AUTOCAST", "true"), ("CHANNELS_LAST", "maybe"), ("PIN_MEMORY", "2"),
    ("CUDNN_BENCHMARK", "fast"), ("GPU_DECODE", "nvjpeg"), ("CUDA_COPY_STREAM", "x"),
    ("SIMULATED_BATCH_MS", "-1"), ("SIMULATED_BATCH_MS", "nan"), ("SIMULATED_ITEM_MS", "inf"),
    ("SIMULATED_ITEM_MS", "two"),
])
def test_a_bad_value_names_its_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}="):
        load(WorkerSettings, {name: raw})


@pytest.mark.parametrize("kwargs", [{"autocast": "fp8"}, {"autocast": None}, {"pin_memory": 1},
                                    {"channels_last": "yes"}])
def test_accel_config_checks_its_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        AccelConfig(**kwargs)  # type: ignore[arg-type]


def test_autocast_dtypes() -> None:
    assert AccelConfig().autocast_dtype is None
    assert AccelConfig(autocast="fp16").autocast_dtype is torch.float16
    assert AccelConfig(autocast="bf16").autocast_dtype is torch.bfloat16


# -- on the CPU ------------------------------------------------------------------

@pytest.mark.parametrize(("config_", "named"), [
    (AccelConfig(autocast="fp16"), "AUTOCAST=fp16"),
    (AccelConfig(autocast="bf16"), "AUTOCAST=bf16"),
    (AccelConfig(gpu_decode=True), "GPU_DECODE=true"),
])
def test_cuda_only_code_paths_are_refused_on_the_cpu(config_: AccelConfig, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Accelerator(config_, CPU)


def test_cuda_tuning_flags_are_no_ops_on_the_cpu(cudnn_benchmark: None) -> None:
    torch.backends.cudnn.benchmark = False
    accelerator = Accelerator(AccelConfig(pin_memory=True, cudnn_benchmark=True, copy_stream=True), CPU)
    accelerator.configure_backends()
    assert torch.backends.cudnn.benchmark is False
    stacked = accelerator.stack([torch.rand(3, 8, 8), torch.rand(3, 8, 8)])
    assert stacked.shape == (2, 3, 8, 8) and not stacked.is_pinned()
    moved = accelerator.to_device(stacked)
    assert moved.device == CPU and moved.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(moved, stacked)
    with accelerator.decode_stream(), accelerator.autocast():
        assert (torch.rand(4, 4) @ torch.rand(4, 4)).dtype is torch.float32
    assert "no-ops here" in accelerator.describe()


def test_channels_last_off_keeps_batches_contiguous() -> None:
    accelerator = Accelerator(AccelConfig(channels_last=False), CPU)
    batch = accelerator.to_device(accelerator.stack([torch.rand(3, 8, 8)] * 2))
    assert batch.is_contiguous() and not batch.is_contiguous(memory_format=torch.channels_last)


def test_accelerator_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="AccelConfig"):
        Accelerator("fp16", CPU)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="torch.device"):
        Accelerator(AccelConfig(), "cpu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one input"):
        Accelerator(AccelConfig(), CPU).stack([])


def test_the_handler_refuses_cuda_only_settings_on_the_cpu_before_loading_a_model() -> None:
    handler = ImageClassifier(device="cpu", accel=AccelConfig(autocast="fp16"))
    with pytest.raises(ConfigError, match="AUTOCAST=fp16"):
        handler.ensure_setup()
    assert handler.model is None


# -- on CUDA ---------------------------------------------------------------------

def _request(image: bytes, top_k: int = 5) -> SimpleRequest:
    return SimpleRequest("id", CLASSIFY_BATCH_TASK, (image, top_k), {}, {}, "host", False, None, None)


def _top1s(handler: ImageClassifier, images: list[bytes]) -> list[int]:
    results = handler.handle([handler.decode(_request(image)) for image in images])
    return [result["predictions"][0]["class_id"] for result in results]


@pytest.fixture(scope="module")
def cpu_classifier() -> ImageClassifier:
    handler = ImageClassifier(device="cpu")
    handler.ensure_setup()
    return handler


@pytest.mark.gpu
@needs_cuda
def test_cuda_stack_pins_and_copies_on_a_side_stream() -> None:
    device = torch.device("cuda")
    accelerator = Accelerator(AccelConfig(copy_stream=True), device)
    inputs = [torch.rand(3, 16, 16) for _ in range(3)]
    stacked = accelerator.stack(inputs)
    assert stacked.is_pinned() and torch.equal(stacked, torch.stack(inputs))
    moved = accelerator.to_device(stacked)
    assert moved.device.type == "cuda" and moved.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(moved.cpu(), torch.stack(inputs))
    unpinned = Accelerator(AccelConfig(pin_memory=False), device).stack(inputs)
    assert not unpinned.is_pinned()


@pytest.mark.gpu
@needs_cuda
def test_cuda_autocast_backends_and_decode_stream(cudnn_benchmark: None) -> None:
    device = torch.device("cuda")
    accelerator = Accelerator(AccelConfig(autocast="fp16", cudnn_benchmark=True), device)
    accelerator.configure_backends()
    assert torch.backends.cudnn.benchmark is True
    a = torch.rand(8, 8, device=device)
    with accelerator.autocast():
        assert (a @ a).dtype is torch.float16
    default = torch.cuda.default_stream(device)
    with accelerator.decode_stream():
        assert torch.cuda.current_stream(device) != default
    assert torch.cuda.current_stream(device) == default


@pytest.mark.gpu
@needs_cuda
def test_gpu_decode_preprocesses_jpegs_on_the_gpu_and_other_formats_on_the_cpu(
    cpu_classifier: ImageClassifier,
) -> None:
    gpu = ImageClassifier(device="cuda", accel=AccelConfig(gpu_decode=True, copy_stream=True))
    gpu.ensure_setup()
    on_gpu = gpu.preprocess(CHELSEA)
    assert on_gpu.device.type == "cuda" and on_gpu.shape == (3, 224, 224)
    assert torch.allclose(on_gpu.cpu(), cpu_classifier.preprocess(CHELSEA), atol=0.05)
    png = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(png, "PNG")
    assert gpu.preprocess(png.getvalue()).device == CPU
    assert _top1s(gpu, [CHELSEA, png.getvalue()]) == _top1s(cpu_classifier, [CHELSEA, png.getvalue()])


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("jit", [True, False])
def test_fp16_autocast_gives_float32_probabilities_and_the_same_answers(
    cpu_classifier: ImageClassifier, jit: bool,
) -> None:
    gpu = ImageClassifier(device="cuda", jit=jit, accel=AccelConfig(autocast="fp16", cudnn_benchmark=True))
    gpu.ensure_setup()
    gpu.warmup([1, 2])
    probabilities = gpu.predict(gpu.batch([gpu.preprocess(CHELSEA), gpu.preprocess(COFFEE)]))
    assert probabilities.dtype is torch.float32 and probabilities.device == CPU
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2), atol=1e-3)
    assert _top1s(gpu, [CHELSEA, COFFEE]) == _top1s(cpu_classifier, [CHELSEA, COFFEE])
    assert _top1s(gpu, [CHELSEA])[0] in CAT_CLASSES
