"""The JSON API: POST /predict (the default model), POST /models/<name>/predict and GET /tasks/<id>."""
from __future__ import annotations

import hmac
import time
from typing import Any

from flask import Blueprint, current_app, request, url_for

from celery import states

from common.config import parse_bool
from common.contract import ClassifyResult

from . import auth, dispatch, models
from .deadlines import Deadline
from .exceptions import InvalidParameter, TaskNotFound, WebAppError
from .uploads import ImageInfo, inspect_image, parse_top_k, read_upload

__all__ = ["bp", "predict_with", "read_classify_request"]

bp = Blueprint("api", __name__)

_NOT_FOUND = "no such task: the id is unknown, or its result has expired"


def read_classify_request(model: models.WebModel) -> tuple[bytes, ImageInfo, int]:
    """Validate the current request's image and ``top_k`` (form field, else query; at most
    ``model``'s labels)."""
    config = current_app.config
    image = read_upload(request)
    info = inspect_image(image, max_bytes=config["MAX_UPLOAD_BYTES"],
                         max_pixels=config["MAX_IMAGE_PIXELS"])
    raw_top_k = request.form.get("top_k") if request.mimetype == "multipart/form-data" else None
    if raw_top_k is None:
        raw_top_k = request.args.get("top_k")
    top_k = parse_top_k(raw_top_k, default=min(config["DEFAULT_TOP_K"], model.num_labels))
    if top_k > model.num_labels:
        raise InvalidParameter(f"top_k must be from 1 to {model.num_labels} (model {model.name} has "
                               f"{model.num_labels} labels), got {top_k}")
    return image, info, top_k


def _asked_async() -> bool:
    """``?async=`` true (``common.config.parse_bool``'s words); anything else means no."""
    try:
        return parse_bool(request.args.get("async", ""))
    except ValueError:
        return False


def _prediction(outcome: dispatch.Outcome, result: ClassifyResult, started: float) -> dict[str, Any]:
    queue_ms = round(max(0.0, (result["started_at"] - outcome.sent_at) * 1000), 2)
    return {
        "task_id": outcome.task_id,
        "model": result["model"],
        "version": result.get("version", "1"),
        "prediction": result["prediction"],
        "score": result["score"],
        "predictions": result["predictions"],
        "mode": result["mode"],
        "batch_size": result["batch_size"],
        "timings_ms": {
            "queue": queue_ms,
            "inference": result["timings_ms"]["inference"],
            "total": round((time.perf_counter() - started) * 1000, 2),
        },
    }


@bp.post("/predict")
def predict() -> Any:
    """Classify an upload with the default model: 200 with predictions, or 202 with ``?async=true``."""
    return predict_with(None)


@bp.post("/models/<name>/predict")
def predict_model(name: str) -> Any:
    """``/predict`` with model ``name``; 404 ``model_not_found`` when there is none."""
    return predict_with(name)


def predict_with(name: str | None) -> Any:
    """The answer to a classify request for model ``name`` (None: the default model)."""
    started = time.perf_counter()
    owner = auth.caller(current_app, request)
    config = current_app.config
    asked_async = _asked_async()
    model = models.lookup(current_app, name, config["BROKER_RETRY_AFTER"], synchronous=not asked_async)
    deadline = Deadline.for_request(
        request, config["ASYNC_RESULT_TTL"] if asked_async else config["RESULT_TIMEOUT"])
    # A full queue answers 503 before the upload is parsed and sniffed: under
    # a flood, refusing costs little (sending checks again, for the race).
    dispatch.admit(current_app, model, asynchronous=asked_async)
    image, _, top_k = read_classify_request(model)
    if asked_async:
        task_id = dispatch.submit(current_app, model, image, top_k, deadline, owner)
        status_url = url_for(".task_status", task_id=task_id)
        return {"task_id": task_id, "status_url": status_url}, 202, {"Location": status_url}
    outcome = dispatch.classify(current_app, model, image, top_k, deadline)
    result = dispatch.result_or_raise(outcome.meta)
    return _prediction(outcome, result, started)


@bp.get("/tasks/<task_id>")
def task_status(task_id: str) -> dict[str, Any]:
    """Report a task's state, with its result or error once it is ready; 404 when unknown."""
    owner = auth.caller(current_app, request)
    recorded = dispatch.owner_of(current_app, task_id)
    # With keys on, only the key that created the task may see it.
    if owner != auth.ANONYMOUS and (recorded is None or not hmac.compare_digest(recorded, owner)):
        raise TaskNotFound(_NOT_FOUND)
    meta = dispatch.status(current_app, task_id)
    if meta is None and recorded is None:
        raise TaskNotFound(_NOT_FOUND)
    state = states.PENDING if meta is None else str(meta.get("status"))
    body: dict[str, Any] = {"task_id": task_id, "status": state}
    if meta is None or state not in states.READY_STATES:
        return body
    try:
        body["result"] = dispatch.result_or_raise(meta)
    except WebAppError as exc:
        body["error"] = {"code": exc.code, "message": exc.message}
    return body
