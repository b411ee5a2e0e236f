"""What crosses the broker between the web app and the workers, in one place.

Task names and their argument order, the result a classify task stores, the
limits both sides enforce, and the errors a worker reports for a client's
input. No torch and no Flask: the web app, the workers, the load tests and
the tests all import it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, TypedDict

__all__ = [
    "ACCEPTED_FORMATS",
    "CLASSIFY_BATCH_TASK",
    "CLASSIFY_TASK",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_TOP_K",
    "MAX_TOP_K",
    "MIN_TOP_K",
    "PING_TASK",
    "WIRE_ERROR_CODES",
    "check_top_k",
    "ClassifyArgs",
    "ClassifyResult",
    "InvalidImageError",
    "InvalidMessageError",
    "MissingImageError",
    "Prediction",
    "Timings",
    "mode_of",
    "model_failure_key",
    "task_name",
]

#: One image, one forward pass (individual mode).
CLASSIFY_TASK = "workers.classify"
#: Buffered by the batching consumer; one forward pass per group (batch mode).
CLASSIFY_BATCH_TASK = "workers.classify_batch"
#: Round trip through the queue: tests and readiness wait on it.
PING_TASK = "workers.ping"

_MODES = {CLASSIFY_TASK: "individual", CLASSIFY_BATCH_TASK: "batch"}

#: Pillow plugins the web app sniffs with and the worker decodes with. A
#: multi-picture JPEG (many phones) opens through JPEG and reports "MPO".
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
#: Largest width x height when ``MAX_IMAGE_PIXELS`` is not set.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000
#: ``top_k`` bounds and default: 1..number of ImageNet classes.
MIN_TOP_K = 1
MAX_TOP_K = 1000
DEFAULT_TOP_K = 5


def check_top_k(value: object) -> int:
    """``value`` as a ``top_k``: an int (not a bool) from MIN_TOP_K to MAX_TOP_K, else ValueError
    saying so. The one check: the web app's parameter, the settings and the worker's message."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_TOP_K <= value <= MAX_TOP_K:
        raise ValueError(f"top_k must be an integer from {MIN_TOP_K} to {MAX_TOP_K}, got {value!r}")
    return value


def model_failure_key(model: str) -> str:
    """The result-backend key under which a model's workers say why it failed to load (so
    ``GET /models`` can tell), removed by the next worker that loads it."""
    return f"celery-inference-model-failure-{model}"


def task_name(batch: bool) -> str:
    """The classify task the web app sends in this mode."""
    return CLASSIFY_BATCH_TASK if batch else CLASSIFY_TASK


def mode_of(name: str) -> str:
    """``individual`` or ``batch``: the mode a classify task name stands for."""
    return _MODES[name]


class InvalidImageError(ValueError):
    """The request's bytes are not an image the worker accepts (undecodable,
    truncated, an unsupported format, or over the pixel limit)."""


class InvalidMessageError(ValueError):
    """A task message whose arguments are not ``ClassifyArgs`` (wrong shape or types)."""


class MissingImageError(LookupError):
    """A task sent without its image (``ClassifyArgs.image`` None) whose stored image is gone:
    its deadline passed long ago, or it was never stored (``common.image_store``)."""


#: Worker exceptions that are the request's own error (its input is bad, or it waited
#: too long), not the worker's, by class name as Celery stores it (``exc_type``), with
#: the error code the web app answers.
WIRE_ERROR_CODES = {
    InvalidImageError.__name__: "invalid_image",
    InvalidMessageError.__name__: "invalid_request",
    MissingImageError.__name__: "expired",
}


class ClassifyArgs(NamedTuple):
    """A classify task's positional arguments, in order."""

    #: The uploaded file, as sent (msgpack carries it as raw bytes); None when it is
    #: stored beside the queue under the task's id (``common.image_store``).
    image: bytes | None
    #: How many of the best classes to return (MIN_TOP_K..MAX_TOP_K).
    top_k: int

    @classmethod
    def from_message(cls, args: Sequence[Any]) -> ClassifyArgs:
        """Check a received message's arguments; :class:`InvalidMessageError` if malformed."""
        if not isinstance(args, (list, tuple)) or len(args) != len(cls._fields):
            raise InvalidMessageError(f"expected arguments (image, top_k), got {_describe(args)}")
        image, top_k = args
        if image is not None and not isinstance(image, (bytes, bytearray)):
            raise InvalidMessageError(f"image must be bytes or None, got {type(image).__name__}")
        try:
            check_top_k(top_k)
        except ValueError as exc:
            raise InvalidMessageError(str(exc)) from None
        return cls(None if image is None else bytes(image), top_k)


def _describe(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"{len(value)} arguments"
    return type(value).__name__


class Prediction(TypedDict):
    """One class of a result."""

    class_id: int
    label: str
    score: float


class Timings(TypedDict):
    """Milliseconds the worker measured."""

    #: The forward pass that served this request (its whole batch's, in batch mode).
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
    #: ``individual`` or ``batch`` (:func:`mode_of` the task that ran).
    mode: str
    batch_size: int
    #: Shared by the requests of one forward pass; None in individual mode.
    batch_id: str | None
    #: Epoch seconds when the forward pass began (the web app derives queue time).
    started_at: float
    timings_ms: Timings
