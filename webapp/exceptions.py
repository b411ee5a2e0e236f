"""Errors the web app turns into JSON responses (see ``webapp.errors``)."""
from __future__ import annotations

__all__ = [
    "BrokerUnavailable",
    "ImageTooLarge",
    "InvalidImage",
    "InvalidParameter",
    "InvalidRequest",
    "MissingImage",
    "ModelNotFound",
    "ModelUnavailable",
    "Overloaded",
    "ResultTimeout",
    "TaskExpired",
    "TaskNotFound",
    "Unauthorized",
    "UnsupportedMediaType",
    "UploadTooLarge",
    "WebAppError",
    "WorkerFailure",
]


class WebAppError(Exception):
    """Base class: an HTTP status, a stable error code and a readable message."""

    #: HTTP status of the response.
    status_code = 500
    #: Machine-readable ``error.code`` in the JSON body.
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def headers(self) -> dict[str, str]:
        """Extra response headers (none by default)."""
        return {}


class MissingImage(WebAppError):
    """The request carries no image (no ``file`` field, empty body)."""

    status_code = 400
    code = "missing_image"


class UploadTooLarge(WebAppError):
    """The image file is larger than MAX_UPLOAD_MB."""

    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(WebAppError):
    """The bytes are not one of the accepted image formats."""

    status_code = 415
    code = "unsupported_media_type"


class InvalidImage(WebAppError):
    """The bytes claim an accepted format but cannot be read as one."""

    status_code = 400
    code = "invalid_image"


class InvalidRequest(WebAppError):
    """The worker found the task's arguments malformed (``InvalidMessageError``)."""

    status_code = 400
    code = "invalid_request"


class ImageTooLarge(WebAppError):
    """The image has more pixels than MAX_IMAGE_PIXELS."""

    status_code = 400
    code = "image_too_large"


class InvalidParameter(WebAppError):
    """A query or form parameter (``top_k``) is out of range or malformed."""

    status_code = 400
    code = "invalid_parameter"


class BrokerUnavailable(WebAppError):
    """The task could not be sent because the broker is unreachable."""

    status_code = 503
    code = "broker_unavailable"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        """Tell the client when to try again."""
        return {"Retry-After": str(self.retry_after)}


class Overloaded(BrokerUnavailable):
    """Admission refused: the queue, the waiting slots or Redis' memory are full."""

    code = "overloaded"

    def __init__(self, message: str, retry_after: int, reason: str) -> None:
        super().__init__(message, retry_after)
        #: ``queue_full``, ``waiting_full`` or ``out_of_memory`` (a metrics label).
        self.reason = reason


class Unauthorized(WebAppError):
    """API keys are on and the request carries no valid ``Authorization: Bearer`` key."""

    status_code = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        """RFC 6750: say which scheme to use."""
        return {"WWW-Authenticate": 'Bearer realm="api"'}


class ModelNotFound(WebAppError):
    """``/models/<name>``: no model of that name in the repository (or ``/predict`` without a default)."""

    status_code = 404
    code = "model_not_found"


class ModelUnavailable(BrokerUnavailable):
    """The model is in the repository but cannot serve (its folder is broken): 503, ``Retry-After``."""

    code = "model_unavailable"


class TaskNotFound(WebAppError):
    """``/tasks/<id>``: no such task, it expired, or it belongs to another key."""

    status_code = 404
    code = "not_found"


class ResultTimeout(WebAppError):
    """No result arrived within the wait's timeout."""

    status_code = 504
    code = "timeout"

    def __init__(self, task_id: str, timeout: float) -> None:
        super().__init__(f"no result for task {task_id} within {timeout:g} s")
        self.task_id = task_id
        self.timeout = timeout


class TaskExpired(WebAppError):
    """The task's ``expires`` passed before a worker ran it (state REVOKED)."""

    status_code = 504
    code = "expired"


class WorkerFailure(WebAppError):
    """The worker failed for a reason other than the client's image."""

    status_code = 502
    code = "worker_error"
