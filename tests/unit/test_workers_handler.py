"""workers.handler: the hooks, and both modes' entry points on the real model and real photos."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any
from unittest.mock import ANY

import numpy as np
import pytest
import torch

from batching import SimpleRequest
from common.contract import CLASSIFY_BATCH_TASK, CLASSIFY_TASK, InvalidImageError, InvalidMessageError
from tests.support.photos import CAT_CLASSES, COFFEE_CLASSES, encode, photo
from workers.accel import AccelConfig
from workers.handler import ImageClassifier
from workers.model import DEFAULT_MODEL, NULL_MODEL, SIMULATED_MODEL
from workers.synthetic import SimulatedCost

CHELSEA, COFFEE, ASTRONAUT = (encode(photo(name), quality=90) for name in ("chelsea", "coffee", "astronaut"))
CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


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


@pytest.fixture(scope="module")
def null_classifier() -> ImageClassifier:
    with pytest.warns(UserWarning, match="benchmark stand-in"):
        handler = ImageClassifier(NULL_MODEL, device="cpu", jit=True)
    handler.ensure_setup()
    return handler


@pytest.fixture
def forward_calls(classifier: ImageClassifier) -> Iterator[list[int]]:
    """Batch size of each forward pass the model runs during the test."""
    calls: list[int] = []
    hook = classifier.loaded.module.register_forward_hook(lambda _m, args, _out: calls.append(len(args[0])))
    yield calls
    hook.remove()


def test_one_request_returns_plain_json_ready_top_k(classifier: ImageClassifier, forward_calls: list[int],
                                                    ) -> None:
    result = _one(classifier, CHELSEA, 5)
    assert forward_calls == [1]
    assert set(result) == {"model", "version", "prediction", "score", "predictions", "mode", "batch_size",
                           "batch_id", "started_at", "timings_ms"}
    assert (result["mode"], result["batch_size"], result["batch_id"]) == ("individual", 1, None)
    assert result["timings_ms"]["inference"] > 0 and result["model"] == DEFAULT_MODEL
    predictions = result["predictions"]
    assert len(predictions) == 5 and predictions[0]["class_id"] in CAT_CLASSES
    assert (result["prediction"], result["score"]) == (predictions[0]["label"], predictions[0]["score"])
    assert _scores(result) == sorted(_scores(result), reverse=True)
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
        assert len(together["predictions"]) == k and _ids(together) == _ids(alone)
        assert np.allclose(_scores(together), _scores(alone), atol=1e-5)


def test_decode_batch_and_warmup(classifier: ImageClassifier, forward_calls: list[int]) -> None:
    tensor = classifier.decode_request(_request(COFFEE))
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32
    # mean = std = 0.5 maps 0..255 to -1..1
    assert (float(tensor.min()), float(tensor.max())) == pytest.approx((-1, 1), abs=1e-5)
    batch = classifier.batch([tensor] * 2)
    assert batch.shape == (2, 3, 224, 224) and batch.device == classifier.loaded.device
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert classifier.predict(batch).shape == (2, 1000)
    forward_calls.clear()
    classifier.warmup([1, 3])
    assert forward_calls == [1, 1, 3, 3]  # twice each: TorchScript optimises on the 2nd call
    loaded = classifier.loaded
    classifier.ensure_setup()
    assert classifier.loaded is loaded and classifier.device == torch.device("cpu")  # loads once


def test_pixel_limit_applies(classifier: ImageClassifier, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classifier, "max_pixels", 100_000)
    with pytest.raises(InvalidImageError, match="over the limit of 100000"):
        classifier.decode_request(_request(CHELSEA))


@pytest.mark.parametrize(("args", "message"), [  # every malformed shape: test_common_contract.py
    ((CHELSEA, 0), "top_k must be an integer from 1 to 1000"), ((CHELSEA,), "arguments"),
    ((None, 5), "no image store")])
def test_malformed_arguments_are_an_invalid_message(classifier: ImageClassifier, args: tuple,
                                                    message: str) -> None:
    request = SimpleRequest("id", CLASSIFY_TASK, args, {}, {}, "host", False, None, None)
    with pytest.raises(InvalidMessageError, match=message):
        classifier.decode_request(request)


def test_top_k_is_checked_once_against_the_models_classes(
        classifier: ImageClassifier, monkeypatch: pytest.MonkeyPatch) -> None:
    three = dataclasses.replace(classifier.loaded, class_names=classifier.loaded.class_names[:3])
    monkeypatch.setattr(classifier, "model", three)
    with pytest.raises(InvalidMessageError, match="top_k must be from 1 to 3"):
        classifier.decode_request(_request(CHELSEA, 4))
    assert classifier.decode_request(_request(CHELSEA, 3)).shape == (3, 224, 224)


def test_inference_before_setup_says_to_call_setup() -> None:
    with pytest.raises(RuntimeError, match=r"setup\(\) must run"):
        ImageClassifier().decode_request(_request(CHELSEA))


def test_random_weights_warn() -> None:
    with pytest.warns(UserWarning, match="benchmarks only"):
        ImageClassifier("resnet18", "random")


# -- on CUDA (workers.accel) ------------------------------------------------------

def _top1s(handler: ImageClassifier, images: list[bytes]) -> list[int]:
    return [_ids(r)[0] for r in _grouped(handler, images, [5] * len(images))]


@pytest.mark.gpu
@needs_cuda
def test_gpu_decode_preprocesses_jpegs_on_the_gpu_and_other_formats_on_the_cpu(
    classifier: ImageClassifier,
) -> None:
    gpu = ImageClassifier(device="cuda", accel=AccelConfig(gpu_decode=True))
    gpu.ensure_setup()
    on_gpu = gpu.preprocess(CHELSEA)
    assert on_gpu.device.type == "cuda" and on_gpu.shape == (3, 224, 224)
    assert torch.allclose(on_gpu.cpu(), classifier.preprocess(CHELSEA), atol=0.05)
    png = encode(photo("chelsea"), "PNG")
    assert gpu.preprocess(png).device == CPU
    assert _top1s(gpu, [CHELSEA, png]) == _top1s(classifier, [CHELSEA, png])


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize(("precision", "jit"), [("fp16", True), ("fp16", False), ("fp32", False)])
def test_cuda_gives_float32_probabilities_and_the_cpus_answers(classifier: ImageClassifier,
                                                               precision: str, jit: bool) -> None:
    gpu = ImageClassifier(device="cuda", jit=jit, accel=AccelConfig(precision, batch_mode=True))
    gpu.ensure_setup()
    gpu.warmup([1, 2])
    probabilities = gpu.predict(gpu.batch([gpu.preprocess(CHELSEA), gpu.preprocess(COFFEE)]))
    assert probabilities.dtype is torch.float32 and probabilities.device == CPU
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(2), atol=1e-3)
    assert _top1s(gpu, [CHELSEA, COFFEE]) == _top1s(classifier, [CHELSEA, COFFEE])
    assert _top1s(gpu, [CHELSEA])[0] in CAT_CLASSES


# -- benchmark stand-ins ----------------------------------------------------------

def test_null_model_serves_both_modes_with_real_preprocessing(null_classifier: ImageClassifier) -> None:
    images = [CHELSEA, COFFEE, ASTRONAUT]
    single = [_one(null_classifier, image, 3) for image in images]
    grouped = _grouped(null_classifier, images, [3, 3, 3])
    assert {r["model"] for r in single} == {NULL_MODEL}
    assert [_ids(r) for r in grouped] == [_ids(r) for r in single]
    assert _one(null_classifier, CHELSEA, 3) == {**single[0], "started_at": ANY, "timings_ms": ANY}


def test_simulated_device_sleeps_per_batch_and_answers_as_the_null_model(
        monkeypatch: pytest.MonkeyPatch, null_classifier: ImageClassifier) -> None:
    with pytest.warns(UserWarning, match="benchmark stand-in"):
        handler = ImageClassifier(SIMULATED_MODEL, device="cpu", jit=True, simulated=SimulatedCost(7, 3))
    handler.ensure_setup()
    assert not isinstance(handler.loaded.module, torch.jit.ScriptModule)  # tracing would drop the sleep
    slept: list[float] = []
    monkeypatch.setattr(handler.loaded.module, "sleep", slept.append)
    grouped = _grouped(handler, [CHELSEA, COFFEE, ASTRONAUT], [1, 1, 1])
    _one(handler, CHELSEA, 1)
    assert slept == [pytest.approx(0.016), pytest.approx(0.010)]  # (7 + 3n) ms for n = 3, then 1
    assert [r["batch_size"] for r in grouped] == [3, 3, 3]
    assert [_ids(r) for r in grouped] == [_ids(r) for r in _grouped(null_classifier, [CHELSEA, COFFEE,
                                                                                      ASTRONAUT], [1, 1, 1])]
