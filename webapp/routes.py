"""The routes: the JSON API (``api``), the HTML upload page (``pages``) and the operators' (``ops``)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any, cast

from flask import Blueprint, Response, abort, current_app, g, render_template, request, url_for
from PIL import Image

from celery import states

from common.config import parse_bool

from .dispatch import Deadline, Dispatcher, result_or_raise
from .errors import ApiError, error_body
from .models import WebModel
from .uploads import inspect_image, parse_top_k, read_upload, requested_timeout

__all__ = ["api", "ops", "pages"]

api = Blueprint("api", __name__)
pages = Blueprint("pages", __name__)
ops = Blueprint("ops", __name__)

PAGE_TOP_K = 5  # predictions shown on the page


def _dispatcher() -> Dispatcher:
    return cast(Dispatcher, current_app.extensions["dispatcher"])


def _caller() -> str:
    """The hash of the request's valid key ("" when keys are off); 401 otherwise."""
    keys = _dispatcher().settings.api_keys
    if not keys:
        return ""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        raise ApiError("unauthorized", "send an API key: Authorization: Bearer <key>")
    matched = False
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        matched |= hmac.compare_digest(given.encode("utf-8", "replace"), key.encode("utf-8"))
    if not matched:
        raise ApiError("unauthorized", "the API key is not valid")
    return hashlib.sha256(given.encode("utf-8")).hexdigest()


def _model(name: str | None, *, asynchronous: bool) -> WebModel:
    """The request's model, labelling its metrics, admitted to its queue before the upload is read."""
    dispatcher = _dispatcher()
    model = dispatcher.model(name, synchronous=not asynchronous)
    g.metrics_model = model.name
    dispatcher.admit(model, asynchronous=asynchronous)
    return model


def _upload(model: WebModel, top_k: int | None = None) -> tuple[bytes, str, int]:
    """The image, its format and ``top_k`` (form field, else query; at most the model's labels)."""
    settings = _dispatcher().settings
    image = read_upload(request)
    fmt = inspect_image(image, max_bytes=settings.max_upload_bytes, max_pixels=settings.max_image_pixels)
    if top_k is None:
        raw = request.form.get("top_k") if request.mimetype == "multipart/form-data" else None
        top_k = parse_top_k(request.args.get("top_k") if raw is None else raw,
                            default=min(settings.default_top_k, model.num_labels))
        if top_k > model.num_labels:
            raise ApiError("invalid_parameter", f"top_k must be from 1 to {model.num_labels} (model "
                           f"{model.name} has {model.num_labels} labels), got {top_k}")
    return image, fmt, top_k


@api.post("/predict", defaults={"name": None})
@api.post("/models/<name>/predict")
def predict(name: str | None) -> Any:
    """Classify an upload with model ``name`` (None: the default): 200, or 202 with ``?async=true``."""
    started = time.perf_counter()
    owner, dispatcher = _caller(), _dispatcher()
    try:
        asynchronous = parse_bool(request.args.get("async", ""))
    except ValueError:
        asynchronous = False
    longest = dispatcher.settings.async_result_ttl if asynchronous else dispatcher.settings.result_timeout
    asked = requested_timeout(request)
    deadline = Deadline.after(longest if asked is None else min(asked, longest))
    model = _model(name, asynchronous=asynchronous)
    image, _, top_k = _upload(model)
    if asynchronous:
        task_id = dispatcher.submit(model, image, top_k, deadline, owner)
        status_url = url_for(".task_status", task_id=task_id)
        return {"task_id": task_id, "status_url": status_url}, 202, {"Location": status_url}
    task_id, sent_at, meta = dispatcher.classify(model, image, top_k, deadline)
    result = result_or_raise(meta)
    return {
        "task_id": task_id, "version": result.get("version", "1"),
        **{key: result[key] for key in ("model", "prediction", "score", "predictions", "mode", "batch_size")},
        "timings_ms": {"queue": round(max(0.0, (result["started_at"] - sent_at) * 1000), 2),
                       "inference": result["timings_ms"]["inference"],
                       "total": round((time.perf_counter() - started) * 1000, 2)},
    }


@api.get("/tasks/<task_id>")
def task_status(task_id: str) -> dict[str, Any]:
    """A task's state, with its result or error once it is ready; 404 when unknown (or another key's)."""
    owner = _caller()
    recorded, meta = _dispatcher().status(task_id)
    if (recorded is None and meta is None) or (owner and not hmac.compare_digest(recorded or "", owner)):
        raise ApiError("not_found", "no such task: the id is unknown, or its result has expired")
    state = states.PENDING if meta is None else str(meta.get("status"))
    body: dict[str, Any] = {"task_id": task_id, "status": state}
    if meta is not None and state in states.READY_STATES:
        try:
            body["result"] = result_or_raise(meta)
        except ApiError as exc:
            body.update(error_body(exc.code, exc.message))
    return body


def _describe(model: WebModel) -> dict[str, object]:
    answer, batch = _dispatcher().readiness.check(), _dispatcher().settings.use_batch_processing
    workers = None if answer.live is None else answer.live.get(model.queue, 0)
    return model.describe(batch, answer.why_not(model), workers)


@api.get("/models")
def list_models() -> dict[str, Any]:
    """Every model of the repository, ready or not (with the reason), and the default."""
    models = _dispatcher().models
    return {"default": models.default,
            "models": [_describe(models.by_name[name]) for name in sorted(models.by_name)]}


@api.get("/models/<name>")
def describe_model(name: str) -> dict[str, Any]:
    return _describe(_dispatcher().models.find(name))


@api.get("/v2/health/live")
def oip_live() -> dict[str, bool]:
    """Open Inference Protocol (v2) liveness: the process answers."""
    return {"live": True}


@api.get("/v2/health/ready")
def oip_ready() -> Any:
    """Open Inference Protocol readiness: ``/readyz``'s answer."""
    ready = _dispatcher().readiness.check().ready
    return {"ready": ready}, 200 if ready else 503


@api.get("/v2/models/<name>")
def oip_metadata(name: str) -> dict[str, Any]:
    """Open Inference Protocol model metadata: the upload in, the class scores out."""
    model = _dispatcher().models.find(name)
    return {
        "name": model.name, "versions": [str(model.spec.version) if model.spec else "1"],
        "platform": f"pytorch_{model.spec.format}" if model.spec else "pytorch",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, model.num_labels]}],
    }


@api.get("/v2/models/<name>/ready")
def oip_model_ready(name: str) -> Any:
    """Open Inference Protocol model readiness: ``/models/<name>``'s ``ready``."""
    model = _dispatcher().models.find(name)
    ready = _dispatcher().readiness.check().why_not(model) is None
    return {"name": model.name, "ready": ready}, 200 if ready else 503


@pages.before_request
def _off_with_api_keys() -> None:
    """A plain form cannot hold a key safely: with ``API_KEYS`` set the page is off (404)."""
    if _dispatcher().settings.api_keys:
        abort(404, "the upload page is off while API keys are required; use the API")


@pages.context_processor
def _page_context() -> dict[str, Any]:
    """What every rendering shows (errors too): the servable models, the default first."""
    models = _dispatcher().models
    names = sorted((name for name, model in models.by_name.items() if model.broken is None),
                   key=lambda name: (name != models.default, name))
    return {"models": names, "max_upload_mb": _dispatcher().settings.max_upload_mb}


@pages.get("/")
def index() -> str:
    return render_template("index.html")


@pages.post("/")
def classify() -> str:
    """Classify the posted image; render its preview and top 5 under the form."""
    deadline = Deadline.after(_dispatcher().settings.result_timeout)
    model = _model(request.form.get("model") or None, asynchronous=False)
    image, fmt, top_k = _upload(model, top_k=min(PAGE_TOP_K, model.num_labels))
    result = result_or_raise(_dispatcher().classify(model, image, top_k, deadline)[2])
    mime = Image.MIME.get(fmt, "application/octet-stream")
    return render_template("index.html", result=result, chosen=model.name,
                           preview=f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}")


@ops.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@ops.get("/readyz")
def readyz() -> Any:
    """The broker answers and the default model (else any) has a live worker; lists the models without."""
    answer = _dispatcher().readiness.check()
    body: dict[str, Any] = {"status": "ok" if answer.ready else "unavailable"}
    if answer.reason is not None:
        body["reason"] = answer.reason
    if answer.live is not None:
        body["models_without_workers"] = list(answer.without_workers)
    return body, 200 if answer.ready else 503


@ops.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics (404 with ``METRICS_PUBLIC=false``)."""
    if not _dispatcher().settings.metrics_public:
        abort(404)
    return _dispatcher().metrics.render()


@ops.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3 document of every route (written by hand; a test keeps it equal to the routes)."""
    return current_app.send_static_file("openapi.json")
