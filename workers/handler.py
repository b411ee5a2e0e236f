"""The worker's model, as the one :class:`batching.BatchAPI` both modes run."""
from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence

import torch

from batching import BatchAPI, SimpleRequest
from common.contract import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ClassifyArgs,
    ClassifyResult,
    InvalidMessageError,
    MissingImageError,
    Prediction,
    mode_of,
)
from common.image_store import ImageStore
from common.repository import ModelSpec
from workers.accel import AccelConfig, Accelerator
from workers.model import (
    BENCHMARK_MODELS,
    DEFAULT_MODEL,
    RANDOM_WEIGHTS,
    LoadedModel,
    load_model,
    resolve_device,
)
from workers.preprocess import DEFAULT_MAX_DECODED_BYTES, Preprocessor, decode_image, decode_jpeg_tensor
from workers.synthetic import SimulatedCost

__all__ = ["ImageClassifier"]

logger = logging.getLogger(__name__)


class ImageClassifier(BatchAPI):
    """Classifies images with one model; ``images``' stored uploads are deleted by ``release``."""

    def __init__(self, model_name: str = DEFAULT_MODEL, weights: str | None = None,
                 device: str | torch.device = "auto", max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                 jit: bool = False, threads: int | None = None,
                 max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES, accel: AccelConfig | None = None,
                 simulated: SimulatedCost | None = None, images: ImageStore | None = None,
                 spec: ModelSpec | None = None) -> None:
        super().__init__()
        if model_name in BENCHMARK_MODELS or weights == RANDOM_WEIGHTS:
            what = "is a benchmark stand-in that returns" if model_name in BENCHMARK_MODELS else \
                "with random weights returns"
            warnings.warn(f"ImageClassifier({model_name!r}) {what} meaningless predictions; use it for "
                          "benchmarks only", stacklevel=2)
        self.model_name, self.weights, self.device = model_name, weights, device
        self.jit, self.threads = jit, threads
        self.max_pixels, self.max_decoded_bytes = max_pixels, max_decoded_bytes
        self.accel, self.simulated, self.images, self.spec = accel or AccelConfig(), simulated, images, spec
        self.version = str(spec.version if spec else 1)  # the repository folder's number
        #: Set by setup(), once per process.
        self.model: LoadedModel | None = None
        self.accelerator: Accelerator
        self._preprocessor: Preprocessor

    def setup(self) -> None:
        """Load the model; :attr:`device` becomes the resolved device."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        target = self.device if isinstance(self.device, torch.device) else resolve_device(self.device)
        accelerator = Accelerator(self.accel, target)  # ConfigError for a CUDA-only setting on the CPU
        accelerator.configure_backends()
        if self.spec is not None:
            from workers.formats import load_spec

            self.model = load_spec(self.spec, target, jit=self.jit, autocast=accelerator.dtype)
        else:
            self.model = load_model(self.model_name, self.weights, target, jit=self.jit,
                                    autocast=accelerator.dtype, simulated=self.simulated)
        logger.info("Device %s: %s", target, accelerator.describe())
        self.device, self.accelerator = target, accelerator
        self._preprocessor = Preprocessor(self.model.preprocess)

    def warmup(self, batch_sizes: Iterable[int] = (1,)) -> None:
        """Run each batch size, so the first requests don't pay for each shape's one-time setup."""
        size = self.loaded.preprocess.input_size
        for batch_size in batch_sizes:
            for _ in range(2):  # TorchScript's profiling executor optimises on the 2nd call
                self.predict(self.batch([torch.zeros(3, size, size)] * batch_size))

    @property
    def loaded(self) -> LoadedModel:
        if self.model is None:
            raise RuntimeError("ImageClassifier.setup() must run before inference")
        return self.model

    def preprocess(self, image: bytes) -> torch.Tensor:
        """Image bytes -> normalised CHW tensor (with ``GPU_DECODE``, a JPEG's on the GPU)."""
        preprocessor = self._preprocessor
        if self.accel.gpu_decode:
            with self.accelerator.decode_stream():
                pixels = decode_jpeg_tensor(image, self.max_pixels, self.accelerator.device,
                                            self.max_decoded_bytes)
                if pixels is not None:
                    return preprocessor.tensor(pixels)
        return preprocessor(decode_image(image, self.max_pixels, preprocessor.draft_size,
                                         self.max_decoded_bytes))

    def decode_request(self, request: SimpleRequest) -> torch.Tensor:
        """Check the message's arguments, then decode its image (in it, or in :attr:`images`)."""
        args = ClassifyArgs.from_message(request.args)
        limit = len(self.loaded.class_names)
        if args.top_k > limit:
            raise InvalidMessageError(f"top_k must be from 1 to {limit} (model {self.model_name} has "
                                      f"{limit} classes), got {args.top_k}")
        image = args.image
        if image is None:
            if self.images is None:
                raise InvalidMessageError("the task carries no image, and this worker has no image store "
                                          "(images travel beside the queue only on a Redis broker)")
            if (image := self.images.get(request.id)) is None:
                raise MissingImageError(f"the image of task {request.id} is no longer stored: the task "
                                        "waited past its deadline")
        return self.preprocess(image)

    def release(self, requests: Sequence[SimpleRequest]) -> None:
        """Delete the stored images of these requests, whose results are stored."""
        by_reference = [r.id for r in requests if r.args and r.args[0] is None]
        if self.images is not None and by_reference:
            self.images.delete(by_reference)

    def batch(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack decoded inputs and move them to the model's device (workers.accel)."""
        return self.accelerator.to_device(self.accelerator.stack(inputs))

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N x classes, float32 on the CPU) in one forward pass."""
        model = self.loaded
        with torch.inference_mode():
            inputs = self.accelerator.to_device(batch)  # a no-op for batch()'s output
            with self.accelerator.autocast():
                logits = model.module(inputs)
            # Softmax in float32 whatever autocast computed in: fp16 rounds small scores to 0.
            return logits.float().softmax(dim=-1).cpu()

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output.unbind(0))

    def encode_response(self, output: torch.Tensor, request: SimpleRequest) -> ClassifyResult:
        """The request's ``top_k`` best classes (checked by decode_request) and how it was served."""
        info = request.batch
        assert info is not None  # set by BatchAPI.handle
        scores, ids = output.topk(int(request.args[1]))
        names = self.loaded.class_names
        predictions = [Prediction(class_id=class_id, label=names[class_id], score=score)
                       for score, class_id in zip(scores.tolist(), ids.tolist())]
        mode = mode_of(request.name)
        return ClassifyResult(
            model=self.model_name, version=self.version,
            prediction=predictions[0]["label"], score=predictions[0]["score"],
            predictions=predictions, mode=mode, batch_size=info.size,
            batch_id=info.id if mode == "batch" else None, started_at=info.started_at,
            timings_ms={"inference": round(info.seconds * 1000, 3)})
