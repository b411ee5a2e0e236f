"""What crosses the broker between web app and workers: tasks, results, limits, errors. No torch, no Flask."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple, TypedDict

__all__ = ["ACCEPTED_FORMATS", "CLASSIFY_BATCH_TASK", "CLASSIFY_TASK", "DEFAULT_MAX_IMAGE_PIXELS",
           "DEFAULT_TOP_K", "MAX_TOP_K", "MIN_TOP_K", "PING_TASK", "WIRE_ERRORS", "WIRE_ERROR_CODES",
           "ClassifyArgs", "ClassifyResult", "InvalidImageError", "InvalidMessageError", "MissingImageError",
           "Prediction", "Timings", "WireError", "check_top_k", "mode_of", "model_failure_key", "task_name"]

#: One image, one forward pass (individual mode).
CLASSIFY_TASK = "workers.classify"
#: Buffered by the batching consumer; one forward pass per group (batch mode).
CLASSIFY_BATCH_TASK = "workers.classify_batch"
#: Round trip through the queue: tests and readiness wait on it.
PING_TASK = "workers.ping"
_MODES = {CLASSIFY_TASK: "individual", CLASSIFY_BATCH_TASK: "batch"}

#: Pillow plugins the web app sniffs and the worker decodes with (a phone's multi-picture JPEG opens as JPEG).
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
#: Largest width x height when ``MAX_IMAGE_PIXELS`` is not set.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
#: ``top_k`` bounds (1..the ImageNet classes) and default.
MIN_TOP_K, MAX_TOP_K, DEFAULT_TOP_K = 1, 1000, 5


def check_top_k(value: object) -> int:
    """``value`` as a ``top_k`` (an int, not a bool, in bounds), else ValueError; every side's one check."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_TOP_K <= value <= MAX_TOP_K:
        raise ValueError(f"top_k must be an integer from {MIN_TOP_K} to {MAX_TOP_K}, got {value!r}")
    return value


def model_failure_key(model: str) -> str:
    """The result-backend key where a model's workers say why it failed to load (``GET /models``)."""
    return f"celery-inference-model-failure-{model}"


def task_name(batch: bool) -> str:
    """The classify task the web app sends in this mode."""
    return CLASSIFY_BATCH_TASK if batch else CLASSIFY_TASK


def mode_of(name: str) -> str:
    """``individual`` or ``batch``: the mode a classify task name stands for."""
    return _MODES[name]


#: Every :class:`WireError` by class name, the ``exc_type`` Celery stores for a failed task.
WIRE_ERRORS: dict[str, type[WireError]] = {}


class WireError(Exception):
    """A worker's error that is the request's own: the web app answers with its ``status`` and ``code``."""

    code: ClassVar[str]
    status: ClassVar[int]
    message: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        WIRE_ERRORS[cls.__name__] = cls


class InvalidImageError(WireError, ValueError):
    """Not an image the worker accepts: undecodable, an unsupported format, over the pixel limit."""

    code, status, message = "invalid_image", 400, "the image cannot be decoded"


class InvalidMessageError(WireError, ValueError):
    """A task message whose arguments are not ``ClassifyArgs`` (wrong shape or types)."""

    code, status, message = "invalid_request", 400, "the worker rejected the task's arguments"


class MissingImageError(WireError, LookupError):
    """A task sent without its image whose stored image is gone (``common.image_store``)."""

    code, status, message = "expired", 504, "the request expired before a worker could take it"


#: The error code of each wire error, by class name.
WIRE_ERROR_CODES = {name: cls.code for name, cls in WIRE_ERRORS.items()}


class ClassifyArgs(NamedTuple):
    """A classify task's positional arguments, in order."""

    #: The upload as sent (msgpack carries raw bytes); None when stored beside the queue (common.image_store).
    image: bytes | None
    top_k: int

    @classmethod
    def from_message(cls, args: Sequence[Any]) -> ClassifyArgs:
        """Check a received message's arguments; :class:`InvalidMessageError` if malformed."""
        if not isinstance(args, (list, tuple)) or len(args) != len(cls._fields):
            shape = f"{len(args)} arguments" if isinstance(args, (list, tuple)) else type(args).__name__
            raise InvalidMessageError(f"expected arguments (image, top_k), got {shape}")
        image, top_k = args
        if image is not None and not isinstance(image, (bytes, bytearray)):
            raise InvalidMessageError(f"image must be bytes or None, got {type(image).__name__}")
        try:
            check_top_k(top_k)
        except ValueError as exc:
            raise InvalidMessageError(str(exc)) from None
        return cls(None if image is None else bytes(image), top_k)


class Prediction(TypedDict):
    """One class of a result."""

    class_id: int
    label: str
    score: float


class Timings(TypedDict):
    """Milliseconds of the forward pass that served the request (its whole batch's)."""

    inference: float


class ClassifyResult(TypedDict):
    """What a classify task stores as its result (JSON)."""

    model: str
    #: The model's version (its folder's number in the repository; "1" without versions).
    version: str
    #: The best class's label and score (``predictions[0]``).
    prediction: str
    score: float
    predictions: list[Prediction]
    mode: str  # individual or batch
    batch_size: int
    #: Shared by the requests of one forward pass; None in individual mode.
    batch_id: str | None
    #: Epoch seconds when the forward pass began (the web app derives queue time).
    started_at: float
    timings_ms: Timings
