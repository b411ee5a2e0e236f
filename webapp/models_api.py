"""What the web app says of its models: ``GET /models``, ``GET /models/<name>``, and the Open
Inference Protocol's health and metadata routes, so KServe and Triton tooling can probe the cluster.

``/v2/health/ready`` answers as ``/readyz`` does; a model is ready when its folder can serve and
a live worker consumes its queue (``webapp.health``), and ``/models`` says why when it is not.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from .models import WebModel, WebModels, find

__all__ = ["bp"]

bp = Blueprint("models_api", __name__)


def _models() -> WebModels:
    served: WebModels = current_app.extensions["models"]
    return served


def _batch_default() -> bool:
    return bool(current_app.config["USE_BATCH_PROCESSING"])


def _stack_ready() -> bool:
    return bool(current_app.extensions["readiness"].check().ready)


def _status(model: WebModel) -> dict[str, object]:
    """``model``'s description with its readiness: why it cannot serve, its live workers."""
    answer = current_app.extensions["readiness"].check()
    workers = None if answer.live is None else answer.live.get(model.queues["sync"].name, 0)
    return model.describe(_batch_default(), answer.why_not(model), workers)


@bp.get("/models")
def list_models() -> dict[str, Any]:
    """Every model of the repository, ready or not (with the reason), and the default."""
    served = _models()
    return {"default": served.default,
            "models": [_status(served.by_name[name]) for name in sorted(served.by_name)]}


@bp.get("/models/<name>")
def describe_model(name: str) -> dict[str, Any]:
    """One model; 404 ``model_not_found``."""
    return _status(find(current_app, name))


@bp.get("/v2/health/live")
def oip_live() -> dict[str, bool]:
    """OIP server liveness: the process answers."""
    return {"live": True}


@bp.get("/v2/health/ready")
def oip_ready() -> Any:
    """OIP server readiness: ``/readyz``'s answer."""
    ready = _stack_ready()
    return {"ready": ready}, 200 if ready else 503


@bp.get("/v2/models/<name>")
def oip_metadata(name: str) -> dict[str, Any]:
    """OIP model metadata: the upload in, the class scores out."""
    model = find(current_app, name)
    version = str(model.spec.version) if model.spec else "1"
    return {
        "name": model.name, "versions": [version],
        "platform": f"pytorch_{model.spec.format}" if model.spec else "pytorch",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}],
        "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, model.num_labels]}],
    }


@bp.get("/v2/models/<name>/ready")
def oip_model_ready(name: str) -> Any:
    """OIP model readiness: it can serve (``/models/<name>``'s ``ready``); 404 for no such model."""
    model = find(current_app, name)
    ready = current_app.extensions["readiness"].check().why_not(model) is None
    return {"name": model.name, "ready": ready}, 200 if ready else 503
