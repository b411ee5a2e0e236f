"""Every HTTP error the web app answers, as ``{"error": {"code", "message"}}`` (the page renders it)."""
from __future__ import annotations

import re
from contextlib import suppress
from typing import Any

from flask import Flask, render_template, request
from werkzeug.exceptions import HTTPException

from common.contract import WIRE_ERRORS

__all__ = ["STATUS", "ApiError", "error_body", "init_app"]

#: Every ``error.code`` with its HTTP status (the workers' client-input errors: ``WIRE_ERRORS``).
STATUS = {
    "missing_image": 400, "invalid_image": 400, "image_too_large": 400, "invalid_parameter": 400,
    "unauthorized": 401, "not_found": 404, "model_not_found": 404, "payload_too_large": 413,
    "unsupported_media_type": 415, "worker_error": 502, "broker_unavailable": 503, "overloaded": 503,
    "model_unavailable": 503, "timeout": 504, "expired": 504,
    **{error.code: error.status for error in WIRE_ERRORS.values()},
}


class ApiError(Exception):
    """An error response: ``code`` (a key of :data:`STATUS`), a message, for a 503 when to retry."""

    def __init__(self, code: str, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status_code, self.retry_after = code, message, STATUS[code], retry_after

    def headers(self) -> dict[str, str]:
        """``Retry-After`` for a 503; RFC 6750's challenge for a 401."""
        if self.code == "unauthorized":
            return {"WWW-Authenticate": 'Bearer realm="api"'}
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON error shape shared by every route."""
    return {"error": {"code": code, "message": message}}


def _respond(status: int, code: str, message: str, headers: dict[str, str]) -> Any:
    # Read an unread upload first: gunicorn closing with a body unread resets it, and nginx answers 502.
    with suppress(HTTPException):  # over MAX_CONTENT_LENGTH, or the client went away
        while request.stream.read(1 << 16):
            pass
    if request.blueprint == "pages":
        return render_template("index.html", error=message), status, headers
    return error_body(code, message), status, headers


def _handle_http(exc: HTTPException) -> Any:
    assert exc.code is not None  # Flask hands those without one (redirects, proxies) back unhandled
    code = re.sub(r"\W+", "_", (exc.name or "error").lower()).strip("_")
    if exc.code == 413:  # werkzeug's name reads worse than the current RFC's
        code = "payload_too_large"
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}  # Allow (405); our body
    return _respond(exc.code, code, exc.description or exc.name, headers)


def init_app(app: Flask) -> None:
    """Register the handlers (an unexpected exception reaches the HTTPException one: JSON too)."""
    app.register_error_handler(ApiError, lambda exc: _respond(exc.status_code, exc.code, exc.message,
                                                              exc.headers()))
    app.register_error_handler(HTTPException, _handle_http)
