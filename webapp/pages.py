"""The HTML upload page: works as a plain form post, no JavaScript needed."""
from __future__ import annotations

import base64

from flask import Blueprint, abort, current_app, render_template, request

from . import dispatch, models
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
    return render_template("index.html", **_choices())


@bp.post("/")
def classify() -> str:
    """Classify the posted image and render its preview and top-5 under the form."""
    config = current_app.config
    deadline = Deadline.after(config["RESULT_TIMEOUT"])
    model = models.lookup(current_app, request.form.get("model") or None, config["BROKER_RETRY_AFTER"],
                          synchronous=True)
    image, info, _ = read_classify_request(model)
    outcome = dispatch.classify(current_app, model, image, min(PAGE_TOP_K, model.num_labels), deadline)
    result = dispatch.result_or_raise(outcome.meta)
    preview = f"data:{info.mime_type};base64,{base64.b64encode(image).decode('ascii')}"
    return render_template("index.html", result=result, preview=preview, info=info,
                           task_id=outcome.task_id, chosen=model.name, **_choices())


def _choices() -> dict[str, object]:
    """The models the page offers, the default first."""
    served: models.WebModels = current_app.extensions["models"]
    names = sorted(name for name, model in served.by_name.items() if model.broken is None)
    names.sort(key=lambda name: name != served.default)
    return {"models": names, "default_model": served.default}
