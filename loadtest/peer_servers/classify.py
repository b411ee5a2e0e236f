"""The project's model and preprocessing for the peer servers: the same code, not a copy of it.

Imported without ``workers/__init__`` (the project's Celery app): LitServe's virtualenv has no Celery,
and the plain Celery peer must not register the project's app beside its own.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from common.contract import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_TOP_K


def _workers_module(name: str) -> Any:
    if "workers" not in sys.modules:
        package = types.ModuleType("workers")
        package.__path__ = [str(Path(__file__).resolve().parents[2] / "workers")]
        sys.modules["workers"] = package
    return importlib.import_module(f"workers.{name}")


class Classifier:
    """Image bytes -> tensor (the project's decoder and preprocessor), batch -> probabilities -> answer."""

    def __init__(self, threads: int | None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        env, preprocess = os.environ, _workers_module("preprocess")
        jit = env.get("MODEL_JIT", "true").lower() in {"1", "true", "yes", "on"}
        self.loaded = _workers_module("model").load_model(env.get("MODEL", "efficientnet_lite0"),
                                                          env.get("MODEL_WEIGHTS") or None,
                                                          torch.device("cpu"), jit=jit)
        self._decode, self._preprocessor = preprocess.decode_image, preprocess.Preprocessor(
            self.loaded.preprocess)

    def warmup(self, batch_sizes: Sequence[int] = (1,)) -> None:
        """Two passes per batch size, as the project's worker does (TorchScript optimises on the second)."""
        size = self.loaded.preprocess.input_size
        for batch_size in batch_sizes:
            for _ in range(2):
                self.predict(torch.zeros(batch_size, 3, size, size))

    def preprocess(self, data: bytes) -> torch.Tensor:
        preprocessor = self._preprocessor
        return preprocessor(self._decode(data, DEFAULT_MAX_IMAGE_PIXELS, preprocessor.draft_size))

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            inputs = batch.contiguous(memory_format=torch.channels_last)
            return self.loaded.module(inputs).softmax(dim=-1).float()

    def answer(self, probabilities: torch.Tensor, mode: str, batch_size: int) -> dict[str, Any]:
        """The project's answer fields, of one image's probabilities."""
        scores, ids = probabilities.topk(min(DEFAULT_TOP_K, probabilities.numel()))
        predictions = [{"class_id": i, "label": self.loaded.class_names[i], "score": s}
                       for s, i in zip(scores.tolist(), ids.tolist())]
        return {"model": self.loaded.name, "prediction": predictions[0]["label"],
                "score": predictions[0]["score"], "predictions": predictions, "mode": mode,
                "batch_size": batch_size}
