"""The JSON API: POST /predict and GET /tasks/<id>."""
from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app, request, url_for

from celery import states

from . import dispatch
from .exceptions import WebAppError
from .uploads import ImageInfo, inspect_image, parse_top_k, read_upload

__all__ = ["bp", "read_classify_request"]

bp = Blueprint("api", __name__)

_TRUE = frozenset({"1", "true", "yes", "on"})


def read_classify_request() -> tuple[bytes, ImageInfo, int]:
    """Validate the current request's image and ``top_k`` (form field, else query)."""
    config = current_app.config
    image = read_upload(request)
    info = inspect_image(image, max_bytes=config["MAX_UPLOAD_BYTES"],
                         max_pixels=config["MAX_IMAGE_PIXELS"])
    raw_top_k = request.form.get("top_k") if request.mimetype == "multipart/form-data" else None
    if raw_top_k is None:
        raw_top_k = request.args.get("top_k")
    top_k = parse_top_k(raw_top_k, default=config["DEFAULT_TOP_K"], maximum=config["MAX_TOP_K"])
    return image, info, top_k


def _prediction(outcome: dispatch.Outcome, result: dict[str, Any], started: float) -> dict[str, Any]:
    began = result.get("started_at")
    queue_ms = None if began is None else round(max(0.0, (began - outcome.sent_at) * 1000), 2)
    return {
        "task_id": outcome.task_id,
        "model": result.get("model"),
        "prediction": result.get("prediction"),
        "score": result.get("score"),
        "predictions": result.get("predictions"),
        "mode": result.get("mode"),
        "batch_size": result.get("batch_size"),
        "timings_ms": {
            "queue": queue_ms,
            "inference": (result.get("timings_ms") or {}).get("inference"),
            "total": round((time.perf_counter() - started) * 1000, 2),
        },
    }


@bp.post("/predict")
def predict() -> Any:
    """Classify an uploaded image: 200 with predictions, or 202 with ``?async=true``."""
    started = time.perf_counter()
    image, _, top_k = read_classify_request()
    if request.args.get("async", "").strip().lower() in _TRUE:
        task_id = dispatch.submit(current_app, image, top_k)
        status_url = url_for(".task_status", task_id=task_id)
        return {"task_id": task_id, "status_url": status_url}, 202, {"Location": status_url}
    outcome = dispatch.classify(current_app, image, top_k)
    result = dispatch.result_or_raise(outcome.meta)
    return _prediction(outcome, result, started)


@bp.get("/tasks/<task_id>")
def task_status(task_id: str) -> dict[str, Any]:
    """Report a task's state, with its result or error once it is ready."""
    meta = dispatch.status(current_app, task_id)
    state = states.PENDING if meta is None else str(meta.get("status"))
    body: dict[str, Any] = {"task_id": task_id, "status": state}
    if meta is None or state not in states.READY_STATES:
        return body
    try:
        body["result"] = dispatch.result_or_raise(meta)
    except WebAppError as exc:
        body["error"] = {"code": exc.code, "message": exc.message}
    return body
