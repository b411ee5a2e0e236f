"""The image classifier: one :class:`batching.BatchAPI` serving both worker modes."""
from __future__ import annotations

import logging
import re
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

_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")
_NOT_SET_UP = "ImageClassifier.setup() must run before inference"


class ImageClassifier(BatchAPI):
    """Classifies images with one model, in LitServe's hook order:
    ``setup`` -> ``decode_request`` -> ``batch`` -> ``predict`` -> ``unbatch`` -> ``encode_response``.

    Registered twice by ``workers.tasks``: unbatched (individual mode, one forward pass per
    request) and batched (batch mode, one forward pass per group). Each request's
    arguments are :class:`common.contract.ClassifyArgs`; each result a ``ClassifyResult``.
    ``accel`` says how to use the device (``workers.accel``); ``simulated`` is the cost
    of the benchmark device ``model_name="simulated"``; ``images`` the store of uploads
    sent beside the queue, deleted by ``release`` once their results are stored.
    """

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        weights: str | None = None,
        device: str | torch.device = "auto",
        max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        jit: bool = False,
        threads: int | None = None,
        max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
        accel: AccelConfig | None = None,
        simulated: SimulatedCost | None = None,
        images: ImageStore | None = None,
        spec: ModelSpec | None = None,
    ) -> None:
        super().__init__()
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
                f"max_pixels must be a positive int, e.g. {DEFAULT_MAX_IMAGE_PIXELS}; got {max_pixels!r}"
            )
        if (isinstance(max_decoded_bytes, bool) or not isinstance(max_decoded_bytes, int)
                or max_decoded_bytes < 1):
            raise ValueError(f"max_decoded_bytes must be a positive int, e.g. {DEFAULT_MAX_DECODED_BYTES}; "
                             f"got {max_decoded_bytes!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be None or a positive int, e.g. 2; got {threads!r}")
        if accel is not None and not isinstance(accel, AccelConfig):
            raise ValueError(f"accel must be None or a workers.accel.AccelConfig; got {accel!r}")
        if simulated is not None and not isinstance(simulated, SimulatedCost):
            raise ValueError(f"simulated must be None or a workers.synthetic.SimulatedCost; "
                             f"got {simulated!r}")
        if model_name in BENCHMARK_MODELS:
            warnings.warn(
                f"ImageClassifier({model_name!r}) is a benchmark stand-in that returns meaningless "
                "predictions; use it for benchmarks only",
                stacklevel=2,
            )
        elif weights == RANDOM_WEIGHTS:
            warnings.warn(
                f"ImageClassifier({model_name!r}) with random weights returns meaningless "
                "predictions; use it for benchmarks only",
                stacklevel=2,
            )
        self.model_name = model_name
        self.weights = weights
        self.device = device
        self.max_pixels = max_pixels
        #: Largest decoded picture in bytes (after JPEG's reduced decoding); bounds decode work.
        self.max_decoded_bytes = max_decoded_bytes
        #: Trace and freeze the model at setup (see workers.model.freeze_for_inference).
        self.jit = jit
        #: torch intra-op threads set at setup (None: torch's own choice).
        self.threads = threads
        #: How to use the device: autocast, memory format, pinned copies... (workers.accel).
        self.accel = accel or AccelConfig()
        #: Cost of the simulated device (``model_name="simulated"`` only; None: its defaults).
        self.simulated = simulated
        #: Where uploads sent beside the queue are read (``common.image_store``); None: only
        #: messages that carry their image are served.
        self.images = images
        #: The repository entry served (``common.repository``); None: ``model_name`` is a
        #: built-in architecture with ``weights``.
        self.spec = spec
        #: The version its answers name (the repository folder's number; "1" without one).
        self.version = str(spec.version if spec else 1)
        #: Set by setup(); None until then.
        self.model: LoadedModel | None = None
        self._preprocessor: Preprocessor | None = None
        self._accelerator: Accelerator | None = None

    def setup(self) -> None:
        """Load the model once per process; afterwards :attr:`device` is the resolved device."""
        if self.model is not None:
            return
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        target = self.device if isinstance(self.device, torch.device) else resolve_device(self.device)
        accelerator = Accelerator(self.accel, target)  # ConfigError for a CUDA-only setting on the CPU
        accelerator.configure_backends()
        if self.spec is not None:
            from workers.formats import load_spec

            self.model = load_spec(self.spec, target, jit=self.jit, channels_last=self.accel.channels_last,
                                   autocast=self.accel.autocast_dtype)
        else:
            self.model = load_model(self.model_name, self.weights, target, jit=self.jit,
                                    channels_last=self.accel.channels_last,
                                    autocast=self.accel.autocast_dtype, simulated=self.simulated)
        logger.info("Device %s: %s", target, accelerator.describe())
        self.device = target
        self._accelerator = accelerator
        self._preprocessor = Preprocessor(self.model.preprocess)

    def warmup(self, batch_sizes: Iterable[int] = (1,)) -> None:
        """Run one forward pass per batch size, so the first requests don't pay for the
        backend's one-time setup of each new input shape (hundreds of ms on CPU)."""
        size = self.loaded.preprocess.input_size
        for batch_size in batch_sizes:
            for _ in range(2):  # TorchScript's profiling executor optimises on the 2nd call
                self.predict(self.batch([torch.zeros(3, size, size)] * batch_size))

    @property
    def loaded(self) -> LoadedModel:
        """The loaded model; a RuntimeError before :meth:`setup`."""
        if self.model is None:
            raise RuntimeError(_NOT_SET_UP)
        return self.model

    @property
    def accelerator(self) -> Accelerator:
        """The device policy in force; a RuntimeError before :meth:`setup`."""
        if self._accelerator is None:
            raise RuntimeError(_NOT_SET_UP)
        return self._accelerator

    def preprocess(self, image: bytes) -> torch.Tensor:
        """Image bytes -> normalised CHW tensor; :class:`InvalidImageError` if undecodable.

        With ``GPU_DECODE`` a JPEG is decoded and preprocessed on the GPU (on this
        thread's own stream), anything else on the CPU as without it.
        """
        preprocessor = self._preprocessor
        if preprocessor is None:
            raise RuntimeError(_NOT_SET_UP)
        if self.accel.gpu_decode:
            accelerator = self.accelerator
            with accelerator.decode_stream():
                pixels = decode_jpeg_tensor(image, self.max_pixels, accelerator.device,
                                            self.max_decoded_bytes)
                if pixels is not None:
                    return preprocessor.tensor(pixels)
        return preprocessor(decode_image(image, self.max_pixels, preprocessor.draft_size,
                                         self.max_decoded_bytes))

    def decode_request(self, request: SimpleRequest) -> torch.Tensor:
        """Check the message's arguments, then decode its image (read from :attr:`images`
        when the message carries none)."""
        args = ClassifyArgs.from_message(request.args)
        self._check_top_k(args.top_k)
        return self.preprocess(self._image_of(request.id, args.image))

    def _image_of(self, task_id: str, image: bytes | None) -> bytes:
        if image is not None:
            return image
        if self.images is None:
            raise InvalidMessageError("the task carries no image, and this worker has no image store "
                                      "(images travel beside the queue only on a Redis broker)")
        stored = self.images.get(task_id)
        if stored is None:
            raise MissingImageError(f"the image of task {task_id} is no longer stored: the task waited "
                                    "past its deadline")
        return stored

    def release(self, requests: Sequence[SimpleRequest]) -> None:
        """Delete the stored images of these requests, whose results are stored."""
        if self.images is None:
            return
        by_reference = [r.id for r in requests if r.args and r.args[0] is None]
        if by_reference:
            self.images.delete(by_reference)

    def batch(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack decoded inputs and move them to the model's device, in its memory format
        (pinned and ``non_blocking``, on a side stream with ``CUDA_COPY_STREAM``: workers.accel)."""
        if not inputs:
            raise ValueError("batch() needs at least one input")
        accelerator = self.accelerator
        return accelerator.to_device(accelerator.stack(inputs))

    def predict(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N x classes, float32 on the CPU) for a batch, in one forward
        pass, under ``AUTOCAST`` when set."""
        model, accelerator = self.loaded, self.accelerator
        with torch.inference_mode():
            inputs = accelerator.to_device(batch)  # a no-op for batch()'s output
            with accelerator.autocast():
                logits = model.module(inputs)
            # Softmax in float32 whatever autocast computed in: fp16 rounds small scores to 0.
            return logits.float().softmax(dim=-1).cpu()

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        """One probability row per input."""
        return list(output.unbind(0))

    def encode_response(self, output: torch.Tensor, request: SimpleRequest) -> ClassifyResult:
        """The request's ``top_k`` best classes and how it was served, as plain JSON-ready values."""
        top_k = ClassifyArgs.from_message(request.args).top_k
        scores, ids = output.topk(self._check_top_k(top_k))
        names = self.loaded.class_names
        predictions = [
            Prediction(class_id=class_id, label=names[class_id], score=score)
            for score, class_id in zip(scores.tolist(), ids.tolist())
        ]
        info = request.batch
        if info is None:
            raise RuntimeError("encode_response needs request.batch (set by BatchAPI.handle)")
        mode = mode_of(request.name)
        return ClassifyResult(
            model=self.model_name, version=self.version,
            prediction=predictions[0]["label"], score=predictions[0]["score"],
            predictions=predictions, mode=mode, batch_size=info.size,
            batch_id=info.id if mode == "batch" else None, started_at=info.started_at,
            timings_ms={"inference": round(info.seconds * 1000, 3)})

    def _check_top_k(self, top_k: int) -> int:
        limit = self.loaded.num_classes
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= limit:
            raise InvalidMessageError(f"top_k must be an int from 1 to {limit}; got {top_k!r}")
        return top_k
