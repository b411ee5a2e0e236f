"""Flask front end: validates image uploads, sends classify tasks by name (never imports ``torch``)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from functools import partial
from typing import Any

from flask import Flask

from common.config import WebSettings, load

from . import errors, models, routes
from .admission import WaitingRequests, bounded_queues
from .dispatch import Dispatcher, celery_init_app
from .operations import Metrics, Readiness
from .uploads import UploadRequest

__all__ = ["MULTIPART_OVERHEAD_BYTES", "create_app"]

#: Room in ``MAX_CONTENT_LENGTH`` for the multipart framing around a file of ``MAX_UPLOAD_MB``.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
#: ``test_config`` keys that are settings (``RESULT_TIMEOUT`` -> ``result_timeout``).
_SETTING_KEYS = {f.name.upper(): f.name for f in fields(WebSettings)}


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """The app: WebSettings from the environment under ``test_config``'s (upper case); the rest is Flask's."""
    config = dict(test_config or {})
    settings = load(WebSettings, **{_SETTING_KEYS[key]: config.pop(key) for key in list(config)
                                    if key in _SETTING_KEYS})
    app = Flask(__name__)
    app.request_class = UploadRequest
    app.config["CELERY"] = {}  # a fresh dict per app, so apps never share it
    app.config.from_mapping(config)
    if app.config.get("MAX_CONTENT_LENGTH") is None:  # werkzeug answers 413 from Content-Length alone
        app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
    app.extensions["web_settings"] = settings

    celery = celery_init_app(app)
    broker_url, timeout = str(celery.conf.broker_url), float(celery.conf.broker_connection_timeout)
    bounded = partial(bounded_queues, broker_url, timeout, settings.max_sync_queue_length,
                      settings.max_queue_length)
    table = models.build(settings.model_repository, settings.default_model,
                         str(celery.conf.task_default_queue), bounded)
    waiting = WaitingRequests(settings.waiting_limit)
    metrics = Metrics(settings.prometheus_multiproc_dir, table, waiting)
    metrics.init_app(app)
    app.extensions["dispatcher"] = Dispatcher(
        celery, settings, table, Readiness(celery, table, settings.ready_cache_seconds), metrics, waiting)
    errors.init_app(app)
    for blueprint in (routes.api, routes.pages, routes.ops):
        app.register_blueprint(blueprint)
    return app
