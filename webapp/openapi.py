"""The OpenAPI 3 document of every route, served at ``/openapi.json``.

Written by hand; ``tests/unit/test_webapp_openapi.py`` keeps its paths and
methods equal to ``app.url_map``, and runs schemathesis against it.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint

from common.contract import ACCEPTED_FORMATS, MAX_TOP_K, MIN_TOP_K

from .deadlines import MIN_TIMEOUT

__all__ = ["SPEC", "bp"]

bp = Blueprint("openapi", __name__)

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    meaning = {
        400: "invalid image or parameter", 401: "API keys are on and the key is missing or wrong",
        404: "unknown model, or unknown or expired task (or another key's)", 413: "file over MAX_UPLOAD_MB",
        415: "not an accepted image format", 502: "the worker failed",
        503: "overloaded or broker unreachable (see Retry-After)", 504: "deadline passed",
    }
    return {str(status): _json(_ERROR, meaning[status]) for status in statuses}


_TOP_K = {"type": "integer", "minimum": MIN_TOP_K, "maximum": MAX_TOP_K}
_TIMEOUT = {"type": "number", "minimum": MIN_TIMEOUT}
_UPLOAD_FORM = {
    "type": "object", "required": ["file"],
    "properties": {"file": {"type": "string", "format": "binary"}, "top_k": _TOP_K},
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_AUTH: list[dict[str, list[str]]] = [{}, {"bearer": []}]  # optional: required only when API_KEYS is set

_MODEL_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}


def _predict(summary: str, parameters: list[dict[str, Any]]) -> dict[str, Any]:
    """A classify route: the upload in, the predictions (or 202) out."""
    return {
        "summary": summary,
        "security": _AUTH,
        "parameters": [
            *parameters,
            {"name": "async", "in": "query", "schema": {"type": "boolean"}},
            {"name": "top_k", "in": "query", "schema": _TOP_K},
            {"name": "timeout", "in": "query", "description": "seconds; capped at the server's",
             "schema": _TIMEOUT},
            {"name": "Request-Timeout", "in": "header", "schema": _TIMEOUT},
            {"name": "X-Request-Timeout", "in": "header", "schema": _TIMEOUT},
        ],
        "requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": _UPLOAD_FORM},
            "application/octet-stream": _BINARY,
            "image/*": _BINARY,
        }},
        "responses": {
            "200": _json({"$ref": "#/components/schemas/Classification"}, "the predictions"),
            "202": _json({"$ref": "#/components/schemas/Accepted"}, "accepted; poll status_url"),
            **_errors(400, 401, 404, 413, 415, 502, 503, 504),
        },
    }


SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "Image classifier",
        "version": "1",
        "description": f"Classifies {', '.join(ACCEPTED_FORMATS)} images with an ImageNet model.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
            },
            "Prediction": {
                "type": "object", "required": ["class_id", "label", "score"],
                "properties": {"class_id": {"type": "integer"}, "label": {"type": "string"},
                               "score": {"type": "number"}},
            },
            "Classification": {
                "type": "object",
                "required": ["task_id", "model", "version", "prediction", "score", "predictions", "mode",
                             "batch_size", "timings_ms"],
                "properties": {
                    "task_id": {"type": "string"}, "model": {"type": "string"}, "version": {"type": "string"},
                    "prediction": {"type": "string"}, "score": {"type": "number"},
                    "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}},
                    "mode": {"type": "string", "enum": ["individual", "batch"]},
                    "batch_size": {"type": "integer"},
                    "timings_ms": {"type": "object", "properties": {
                        "queue": {"type": "number"}, "inference": {"type": "number"},
                        "total": {"type": "number"}}},
                },
            },
            "Accepted": {
                "type": "object", "required": ["task_id", "status_url"],
                "properties": {"task_id": {"type": "string"}, "status_url": {"type": "string"}},
            },
            "TaskStatus": {
                "type": "object", "required": ["task_id", "status"],
                "properties": {
                    "task_id": {"type": "string"}, "status": {"type": "string"},
                    "result": {"$ref": "#/components/schemas/Classification"},
                    "error": {"type": "object", "properties": {
                        "code": {"type": "string"}, "message": {"type": "string"}}},
                },
            },
        },
    },
    "paths": {
        "/predict": {"post": _predict("Classify an image with the default model (200), or accept it for "
                                      "later (202 with async=true)", [])},
        "/models/{name}/predict": {"post": _predict("/predict with the model named", [_MODEL_NAME])},
        "/models": {"get": {"summary": "Every model of the repository, ready or not (and why not)",
                            "responses": {"200": _json({"type": "object"}, "the models and the default")}}},
        "/models/{name}": {"get": {"summary": "One model: labels, input size, batching, version, readiness",
                                   "parameters": [_MODEL_NAME],
                                   "responses": {"200": _json({"type": "object"}, "the model"),
                                                 **_errors(404)}}},
        "/v2/health/live": {"get": {"summary": "Open Inference Protocol: server live", "responses": {
            "200": _json({"type": "object"}, "live")}}},
        "/v2/health/ready": {"get": {"summary": "Open Inference Protocol: server ready (as /readyz)",
                                     "responses": {"200": _json({"type": "object"}, "ready"),
                                                   "503": _json({"type": "object"}, "not ready")}}},
        "/v2/models/{name}": {"get": {"summary": "Open Inference Protocol: model metadata",
                                      "parameters": [_MODEL_NAME],
                                      "responses": {"200": _json({"type": "object"}, "metadata"),
                                                    **_errors(404)}}},
        "/v2/models/{name}/ready": {"get": {"summary": "Open Inference Protocol: model ready",
                                            "parameters": [_MODEL_NAME],
                                            "responses": {"200": _json({"type": "object"}, "ready"),
                                                          "503": _json({"type": "object"}, "not ready"),
                                                          **_errors(404)}}},
        "/tasks/{task_id}": {"get": {
            "summary": "An async task's state, with its result or error once ready",
            "security": _AUTH,
            "parameters": [{"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _json({"$ref": "#/components/schemas/TaskStatus"}, "the task's state"),
                          **_errors(401, 404, 503)},
        }},
        "/": {
            "get": {"summary": "The upload page (404 while API keys are on)",
                    "responses": {"200": {"description": "HTML", "content": {"text/html": {}}},
                                  "404": {"description": "off", "content": {"text/html": {}}}}},
            "post": {"summary": "Classify from the page's form; renders the result",
                     "requestBody": {"required": True,
                                     "content": {"multipart/form-data": {"schema": _UPLOAD_FORM}}},
                     "responses": {"200": {"description": "HTML", "content": {"text/html": {}}},
                                   "default": {"description": "the page with an error",
                                               "content": {"text/html": {}}}}},
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {
            "200": _json({"type": "object"}, "the process answers")}}},
        "/readyz": {"get": {"summary": "Readiness: broker reachable, the default model has a live worker",
                            "responses": {
            "200": _json({"type": "object"}, "ready"), "503": _json({"type": "object"}, "not ready")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (404 with METRICS_PUBLIC=false)", "responses": {
            "200": {"description": "text exposition", "content": {"text/plain": {}}},
            **_errors(404)}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {
            "200": _json({"type": "object"}, "OpenAPI 3")}}},
    },
}


@bp.get("/openapi.json")
def openapi() -> dict[str, Any]:
    """The OpenAPI document."""
    return SPEC
