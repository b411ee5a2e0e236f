"""The HTML upload page: works as a plain form post, no JavaScript needed."""
from __future__ import annotations

import base64

from flask import Blueprint, abort, current_app, render_template

from . import dispatch
from .api import read_classify_request
from .deadlines import Deadline

__all__ = ["PAGE_TOP_K", "bp"]

bp = Blueprint("pages", __name__)

#: Predictions shown on the page.
PAGE_TOP_K = 5


@bp.before_request
def _off_with_api_keys() -> None:
    """With ``API_KEYS`` set the page is off (404): a plain form cannot hold a key safely."""
    if current_app.config.get("API_KEYS"):
        abort(404, "the upload page is off while API keys are required; use the API")


@bp.get("/")
def index() -> str:
    """Render the upload form."""
    return render_template("index.html")


@bp.post("/")
def classify() -> str:
    """Classify the posted image and render its preview and top-5 under the form."""
    deadline = Deadline.after(current_app.config["RESULT_TIMEOUT"])
    image, info, _ = read_classify_request()
    outcome = dispatch.classify(current_app, image, PAGE_TOP_K, deadline)
    result = dispatch.result_or_raise(outcome.meta)
    preview = f"data:{info.mime_type};base64,{base64.b64encode(image).decode('ascii')}"
    return render_template("index.html", result=result, preview=preview, info=info,
                           task_id=outcome.task_id)
