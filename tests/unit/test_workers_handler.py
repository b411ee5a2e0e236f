"""workers.handler: the hooks, and both modes' entry points on the real model and real photos."""
from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any
from unittest.mock import ANY

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from batching import SimpleRequest
from common.config import ConfigError
from common.contract import CLASSIFY_BATCH_TASK, CLASSIFY_TASK, InvalidImageError, InvalidMessageError
from workers.accel import AccelConfig
from workers.handler import ImageClassifier
from workers.model import DEFAULT_MODEL, LITE0_PREPROCESS, NULL_MODEL, SIMULATED_MODEL
from workers.synthetic import SimulatedCost

CAT_CLASSES = {281, 282, 283, 284, 285}
COFFEE_CLASSES = {967, 968, 504}


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


CHELSEA = _jpeg(skimage.data.chelsea())
COFFEE = _jpeg(skimage.data.coffee())
ASTRONAUT = _jpeg(skimage.data.astronaut())


def _request(image: object, top_k: object = 5, name: str = CLASSIFY_TASK) -> SimpleRequest:
    return SimpleRequest("id", name, (image, top_k), {}, {}, "host", False, None, None)


def _one(classifier: ImageClassifier, image: bytes, top_k: int = 5) -> dict[str, Any]:
    """Individual mode: one request, one forward pass."""
    return dict(classifier(_request(image, top_k)))


def _grouped(classifier: ImageClassifier, images: list[bytes], top_ks: list[int]) -> list[dict[str, Any]]:
    """Batch mode: decoded requests, one forward pass for the group."""
    requests = [classifier.decode(_request(i, k, CLASSIFY_BATCH_TASK)) for i, k in zip(images, top_ks)]
    return [dict(result) for result in classifier.handle(requests)]


def _ids(result: dict[str, Any]) -> list[int]:
    return [p["class_id"] for p in result["predictions"]]


def _scores(result: dict[str, Any]) -> list[float]:
    return [p["score"] for p in result["predictions"]]


@pytest.fixture(scope="module")
def classifier() -> ImageClassifier:
    handler = ImageClassifier(device="cpu")
    handler.ensure_setup()
    return handler


@pytest.fixture
def forward_calls(classifier: ImageClassifier) -> Iterator[list[int]]:
    """Batch size of each forward pass the model runs during the test."""
    calls: list[int] = []
    hook = classifier.loaded.module.register_forward_hook(lambda _m, args, _out: calls.append(len(args[0])))
    yield calls
    hook.remove()


def test_one_request_returns_plain_json_ready_top_k(
    classifier: ImageClassifier, forward_calls: list[int]
) -> None:
    result = _one(classifier, CHELSEA, 5)
    assert forward_calls == [1]
    assert set(result) == {"model", "version", "prediction", "score", "predictions", "mode", "batch_size",
                           "batch_id", "started_at", "timings_ms"}
    assert (result["mode"], result["batch_size"], result["batch_id"]) == ("individual", 1, None)
    assert result["timings_ms"]["inference"] > 0
    assert result["model"] == DEFAULT_MODEL
    predictions = result["predictions"]
    assert len(predictions) == 5
    assert predictions[0]["class_id"] in CAT_CLASSES
    assert (result["prediction"], result["score"]) == (predictions[0]["label"], predictions[0]["score"])
    assert [p["score"] for p in predictions] == sorted((p["score"] for p in predictions), reverse=True)
    for prediction in predictions:
        assert type(prediction["class_id"]) is int and type(prediction["label"]) is str
        assert type(prediction["score"]) is float and 0 < prediction["score"] <= 1
    assert json.loads(json.dumps(result)) == result


def test_a_batch_matches_single_requests_with_one_forward_pass(
    classifier: ImageClassifier, forward_calls: list[int]
) -> None:
    images, top_ks = [CHELSEA, COFFEE, ASTRONAUT], [1, 3, 5]
    single = [_one(classifier, image, k) for image, k in zip(images, top_ks)]
    forward_calls.clear()
    grouped = _grouped(classifier, images, top_ks)
    assert forward_calls == [3]
    assert {r["mode"] for r in grouped} == {"batch"} and {r["batch_size"] for r in grouped} == {3}
    assert len({r["batch_id"] for r in grouped}) == 1 and grouped[0]["batch_id"] is not None
    assert grouped[0]["predictions"][0]["class_id"] in CAT_CLASSES
    assert grouped[1]["predictions"][0]["class_id"] in COFFEE_CLASSES
    for alone, together, k in zip(single, grouped, top_ks):
        assert len(together["predictions"]) == k
        assert _ids(together) == _ids(alone)
        assert np.allclose(_scores(together), _scores(alone), atol=1e-5)


def test_decode_request_gives_the_models_input(classifier: ImageClassifier) -> None:
    tensor = classifier.decode_request(_request(COFFEE))
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32
    # mean = std = 0.5 maps 0..255 to -1..1
    assert float(tensor.min()) == pytest.approx(-1, abs=1e-5)
    assert float(tensor.max()) == pytest.approx(1, abs=1e-5)


@pytest.mark.parametrize(
    "data", [b"", b"GIF89a broken", CHELSEA[:2000]], ids=["empty", "garbage", "truncated"]
)
def test_undecodable_image_is_an_invalid_image(classifier: ImageClassifier, data: bytes) -> None:
    with pytest.raises(InvalidImageError):
        _one(classifier, data, 5)
    with pytest.raises(InvalidImageError):
        classifier.decode_request(_request(data))


def test_pixel_limit_applies() -> None:
    handler = ImageClassifier(device="cpu", max_pixels=100_000)
    handler.ensure_setup()
    with pytest.raises(InvalidImageError, match="over the limit of 100000"):
        handler.decode_request(_request(CHELSEA))


@pytest.mark.parametrize("top_k", [0, 1001, True, "5", 2.0])
def test_bad_top_k_is_an_invalid_message(classifier: ImageClassifier, top_k: object) -> None:
    with pytest.raises(InvalidMessageError, match="top_k must be an integer from 1 to 1000"):
        classifier.decode_request(_request(CHELSEA, top_k))


@pytest.mark.parametrize("args", [(), (CHELSEA,), (CHELSEA, 5, 6), ("text", 5), (None, 5)])
def test_malformed_arguments_are_an_invalid_message(classifier: ImageClassifier, args: tuple) -> None:
    request = SimpleRequest("id", CLASSIFY_TASK, args, {}, {}, "host", False, None, None)
    with pytest.raises(InvalidMessageError):
        classifier.decode_request(request)


def test_batch_moves_inputs_to_the_model_device(classifier: ImageClassifier) -> None:
    batch = classifier.batch([classifier.decode_request(_request(CHELSEA))] * 2)
    assert batch.shape == (2, 3, 224, 224) and batch.device == classifier.loaded.device
    assert classifier.predict(batch).shape == (2, 1000)


def test_setup_loads_once_and_resolves_the_device(classifier: ImageClassifier) -> None:
    loaded = classifier.loaded
    classifier.setup()
    classifier.ensure_setup()
    assert classifier.loaded is loaded
    assert classifier.device == torch.device("cpu")


def test_warmup_runs_each_batch_size(classifier: ImageClassifier, forward_calls: list[int]) -> None:
    classifier.warmup([1, 3])
    assert forward_calls == [1, 1, 3, 3]  # twice each: TorchScript optimises on the 2nd call


def test_inference_before_setup_says_to_call_setup() -> None:
    handler = ImageClassifier()
    with pytest.raises(RuntimeError, match=r"setup\(\) must run"):
        handler.predict(torch.zeros(1, 3, 224, 224))
    with pytest.raises(RuntimeError, match=r"setup\(\) must run"):
        handler.decode_request(_request(CHELSEA))


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"model_name": ""}, "model_name"),
        ({"weights": ""}, "weights"),
        ({"device": "gpu"}, "'gpu'"),
        ({"max_pixels": 0}, "max_pixels"),
        ({"max_pixels": True}, "max_pixels"),
        ({"threads": 0}, "threads"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        ImageClassifier(**kwargs)  # type: ignore[arg-type]


def test_random_weights_warn_at_construction() -> None:
    with pytest.warns(UserWarning, match="benchmarks only"):
        ImageClassifier("resnet18", "random")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(classifier: ImageClassifier) -> None:
    gpu = ImageClassifier(device="cuda")
    gpu.ensure_setup()
    assert gpu.loaded.device.type == "cuda"
    on_cpu = _grouped(classifier, [CHELSEA, COFFEE], [5, 5])
    on_gpu = _grouped(gpu, [CHELSEA, COFFEE], [5, 5])
    for a, b in zip(on_cpu, on_gpu):
        assert _ids(a)[:2] == _ids(b)[:2]
        assert np.allclose(_scores(a), _scores(b), atol=1e-3)
    assert _one(gpu, CHELSEA, 1)["predictions"][0]["class_id"] in CAT_CLASSES


# -- benchmark stand-ins and device settings ------------------------------------

@pytest.fixture(scope="module")
def null_classifier() -> ImageClassifier:
    with pytest.warns(UserWarning, match="benchmark stand-in"):
        handler = ImageClassifier(NULL_MODEL, device="cpu", jit=True)
    handler.ensure_setup()
    return handler


def test_null_model_serves_both_modes_with_real_preprocessing(null_classifier: ImageClassifier) -> None:
    images = [CHELSEA, COFFEE, ASTRONAUT]
    single = [_one(null_classifier, image, 3) for image in images]
    grouped = _grouped(null_classifier, images, [3, 3, 3])
    assert {r["model"] for r in single} == {NULL_MODEL}
    assert [_ids(r) for r in grouped] == [_ids(r) for r in single]
    assert len({_ids(r)[0] for r in single}) == 3  # different photos, different answers
    assert _one(null_classifier, CHELSEA, 3) == {**single[0], "started_at": ANY, "timings_ms": ANY}
    tensor = null_classifier.decode_request(_request(COFFEE))
    assert tensor.shape == (3, 224, 224) and float(tensor.min()) == pytest.approx(-1, abs=1e-5)
    assert null_classifier.loaded.preprocess == LITE0_PREPROCESS  # the default model's


def test_simulated_device_sleeps_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.warns(UserWarning, match="benchmark stand-in"):
        handler = ImageClassifier(SIMULATED_MODEL, device="cpu", simulated=SimulatedCost(7, 3))
    handler.ensure_setup()
    slept: list[float] = []
    monkeypatch.setattr(handler.loaded.module, "sleep", slept.append)
    grouped = _grouped(handler, [CHELSEA, COFFEE, ASTRONAUT], [1, 1, 1])
    _one(handler, CHELSEA, 1)
    assert slept == [pytest.approx(0.016), pytest.approx(0.010)]
    assert [r["batch_size"] for r in grouped] == [3, 3, 3]


def test_channels_last_off_gives_contiguous_batches(null_classifier: ImageClassifier) -> None:
    with pytest.warns(UserWarning):
        handler = ImageClassifier(NULL_MODEL, device="cpu", accel=AccelConfig(channels_last=False))
    handler.ensure_setup()
    inputs = [handler.decode_request(_request(CHELSEA))] * 2
    assert handler.batch(inputs).is_contiguous()
    assert null_classifier.batch(inputs).is_contiguous(memory_format=torch.channels_last)
    plain = handler.predict(handler.batch(inputs))
    assert torch.allclose(plain, null_classifier.predict(null_classifier.batch(inputs)), atol=1e-6)


@pytest.mark.parametrize("accel", [AccelConfig(autocast="bf16"), AccelConfig(gpu_decode=True)])
def test_cuda_only_settings_stop_setup_on_the_cpu(accel: AccelConfig) -> None:
    with pytest.warns(UserWarning):
        handler = ImageClassifier(NULL_MODEL, device="cpu", accel=accel)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        handler.ensure_setup()


@pytest.mark.parametrize(("kwargs", "named"),
                         [({"accel": "fp16"}, "accel"), ({"simulated": (20, 2)}, "simulated")])
def test_constructor_rejects_bad_device_settings(kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        ImageClassifier(**kwargs)  # type: ignore[arg-type]
