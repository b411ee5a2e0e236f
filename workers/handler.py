"""The image classifier both worker modes call, with LitServe's handler hooks."""
from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from workers.model import DEFAULT_MODEL, RANDOM_WEIGHTS, LoadedModel, load_model, resolve_device
from workers.preprocess import Preprocessor, decode_image

__all__ = ["DEFAULT_MAX_PIXELS", "ImageClassifier"]

logger = logging.getLogger(__name__)

#: Largest picture (width x height) decoded when the caller does not say.
DEFAULT_MAX_PIXELS = 40_000_000

_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
_NOT_SET_UP = "ImageClassifier.setup() must run before inference"


class ImageClassifier:
    """Classifies images with one model, in LitServe's hook order:
    ``setup`` -> ``decode_request`` -> ``batch`` -> ``forward`` -> ``unbatch`` -> ``encode_response``.

    Two entry points share those hooks: :meth:`predict` (individual mode: one image, one
    forward pass) and :meth:`predict_batch` (batch mode: already-decoded images, one
    forward pass for the group). LitServe names its model hook ``predict``; here that
    name is the individual-mode entry point, so the model hook is :meth:`forward`.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        weights: str | None = None,
        device: str | torch.device = "auto",
        max_pixels: int = DEFAULT_MAX_PIXELS,
        jit: bool = False,
    ) -> None:
        if not isinstance(model_name, str) or not model_name.strip():
            raise ValueError(f"model_name must name a model, e.g. {DEFAULT_MODEL!r}; got {model_name!r}")
        if weights is not None and (not isinstance(weights, str) or not weights.strip()):
            raise ValueError(f"weights must be None, {RANDOM_WEIGHTS!r} or a file path; got {weights!r}")
        if not isinstance(device, torch.device) and not (
            isinstance(device, str) and _DEVICE_PATTERN.fullmatch(device.strip().lower())
        ):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}")
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
            raise ValueError(
                f"max_pixels must be a positive int, e.g. {DEFAULT_MAX_PIXELS}; got {max_pixels!r}"
            )
        if weights == RANDOM_WEIGHTS:
            warnings.warn(
                f"ImageClassifier({model_name!r}) with random weights returns meaningless "
                "predictions; use it for benchmarks only",
                stacklevel=2,
            )
        self.model_name = model_name
        self.weights = weights
        self.device = device
        self.max_pixels = max_pixels
        #: Trace and freeze the model at setup (see workers.model.freeze_for_inference).
        self.jit = jit
        #: Set by setup(); None until then.
        self.model: LoadedModel | None = None
        self._preprocessor: Preprocessor | None = None

    def setup(self, device: str | torch.device | None = None) -> None:
        """Load the model once per process (a second call keeps the loaded one).

        ``device`` overrides the constructor's, as LitServe passes it here; afterwards
        :attr:`device` is the resolved :class:`torch.device` the model is on.
        """
        if self.model is not None:
            return
        target = device if device is not None else self.device
        if not isinstance(target, torch.device):
            target = resolve_device(target)
        self.model = load_model(self.model_name, self.weights, target, jit=self.jit)
        self.device = target
        self._preprocessor = Preprocessor(self.model.preprocess)

    def warmup(self, batch_sizes: Iterable[int] = (1,)) -> None:
        """Run one forward pass per batch size, so the first requests don't pay for the
        backend's one-time setup of each new input shape (hundreds of ms on CPU)."""
        size = self.loaded.preprocess.input_size
        for batch_size in batch_sizes:
            for _ in range(2):  # TorchScript's profiling executor optimises on the 2nd call
                self.forward(self.batch([torch.zeros(3, size, size)] * batch_size))

    @property
    def loaded(self) -> LoadedModel:
        """The loaded model; a RuntimeError before :meth:`setup`."""
        if self.model is None:
            raise RuntimeError(_NOT_SET_UP)
        return self.model

    def decode_request(self, image: bytes) -> torch.Tensor:
        """Image bytes -> normalised CHW tensor; :class:`InvalidImageError` if undecodable."""
        preprocessor = self._preprocessor
        if preprocessor is None:
            raise RuntimeError(_NOT_SET_UP)
        return preprocessor(decode_image(image, self.max_pixels, preprocessor.draft_size))

    def batch(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack decoded inputs and move them to the model's device."""
        if not inputs:
            raise ValueError("batch() needs at least one input")
        device = self.loaded.device
        stacked = torch.stack(list(inputs))
        if device.type == "cuda" and stacked.device.type == "cpu":
            # Pinned pages let the copy run asynchronously with the host.
            stacked = stacked.pin_memory()
        return stacked.to(
            device, non_blocking=device.type == "cuda", memory_format=torch.channels_last
        )

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N x classes, on the CPU) for a batch, in one forward pass."""
        model = self.loaded
        with torch.inference_mode():
            inputs = batch.to(model.device, non_blocking=model.device.type == "cuda")
            return model.module(inputs).softmax(dim=-1).float().cpu()

    def unbatch(self, output: torch.Tensor, expected: int) -> list[torch.Tensor]:
        """One probability row per input; a count mismatch fails the whole batch."""
        rows = list(output.unbind(0))
        if len(rows) != expected:
            logger.error(
                "Model %s returned %d outputs for %d inputs", self.model_name, len(rows), expected
            )
            raise RuntimeError(f"model returned {len(rows)} outputs for {expected} inputs")
        return rows

    def encode_response(self, probs: torch.Tensor, top_k: int) -> dict[str, Any]:
        """The ``top_k`` best classes as plain JSON-ready Python values."""
        scores, ids = probs.topk(self._check_top_k(top_k))
        names = self.loaded.class_names
        predictions = [
            {"class_id": class_id, "label": names[class_id], "score": score}
            for score, class_id in zip(scores.tolist(), ids.tolist())
        ]
        best = predictions[0]
        return {
            "model": self.model_name,
            "prediction": best["label"],
            "score": best["score"],
            "predictions": predictions,
        }

    def predict(self, image: bytes, top_k: int) -> dict[str, Any]:
        """Individual mode: decode one image and classify it in its own forward pass."""
        self._check_top_k(top_k)
        (probs,) = self.unbatch(self.forward(self.batch([self.decode_request(image)])), 1)
        return self.encode_response(probs, top_k)

    def predict_batch(self, inputs: Sequence[torch.Tensor], top_ks: Sequence[int]) -> list[dict[str, Any]]:
        """Batch mode: classify already-decoded inputs in ONE forward pass."""
        if len(inputs) != len(top_ks):
            raise ValueError(f"got {len(inputs)} inputs but {len(top_ks)} top_k values")
        for top_k in top_ks:
            self._check_top_k(top_k)
        rows = self.unbatch(self.forward(self.batch(inputs)), len(inputs))
        return [self.encode_response(row, top_k) for row, top_k in zip(rows, top_ks)]

    def _check_top_k(self, top_k: int) -> int:
        limit = self.loaded.num_classes
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= limit:
            raise ValueError(f"top_k must be an int from 1 to {limit}; got {top_k!r}")
        return top_k
