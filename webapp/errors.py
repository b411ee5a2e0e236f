"""Every error becomes ``{"error": {"code", "message"}}`` (or the page, for the page routes)."""
from __future__ import annotations

import re
from typing import Any

from flask import Flask, current_app, render_template, request
from werkzeug.exceptions import HTTPException

from . import metrics
from .exceptions import Overloaded, WebAppError

__all__ = ["error_body", "init_app"]

#: Codes whose werkzeug name reads worse than the current RFC's.
_CODES = {413: "payload_too_large"}


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON error shape shared by every route."""
    return {"error": {"code": code, "message": message}}


def _respond(status: int, code: str, message: str, headers: dict[str, str]) -> Any:
    if request.blueprint == "pages":
        return render_template("index.html", error=message), status, headers
    return error_body(code, message), status, headers


def _handle_app_error(exc: WebAppError) -> Any:
    if isinstance(exc, Overloaded):
        metrics.rejected(current_app, exc.reason)
    return _respond(exc.status_code, exc.code, exc.message, exc.headers())


def _handle_http(exc: HTTPException) -> Any:
    if exc.code is None:  # not an error response
        return exc
    code = _CODES.get(exc.code) or re.sub(r"\W+", "_", (exc.name or "error").lower()).strip("_")
    # Keep headers such as Allow (405); the body is ours.
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    return _respond(exc.code, code, exc.description or exc.name, headers)


def init_app(app: Flask) -> None:
    """Register the JSON error handlers.

    Unexpected exceptions reach the HTTPException handler as Flask's
    InternalServerError (after Flask logs them), so they are JSON too.
    """
    app.register_error_handler(WebAppError, _handle_app_error)
    app.register_error_handler(HTTPException, _handle_http)
