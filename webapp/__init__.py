"""Flask front end: takes image uploads and sends classify tasks to Celery workers.

Never imports ``torch`` or ``workers``: tasks are sent by name.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from . import api, defaults, errors, health, metrics, pages, settings
from .celery_ext import celery_init_app
from .results import ResultWaiter
from .uploads import UploadRequest

__all__ = ["create_app"]


def _default_config() -> dict[str, Any]:
    config = {name: getattr(defaults, name) for name in defaults.__all__}
    config["CELERY"] = dict(defaults.CELERY)  # a copy: apps must not share it
    return config


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then environment, then ``test_config``."""
    app = Flask(__name__)
    app.request_class = UploadRequest
    app.config.from_mapping(_default_config())
    app.config.from_mapping(settings.from_environ(os.environ))
    app.config.from_prefixed_env()
    if test_config is not None:
        app.config.from_mapping(test_config)
    # Werkzeug answers 413 from Content-Length alone, before reading the body;
    # the file itself is then held to the exact limit in uploads.inspect_image.
    app.config["MAX_UPLOAD_BYTES"] = int(app.config["MAX_UPLOAD_MB"] * 1024 * 1024)
    if app.config.get("MAX_CONTENT_LENGTH") is None:
        app.config["MAX_CONTENT_LENGTH"] = (
            app.config["MAX_UPLOAD_BYTES"] + defaults.MULTIPART_OVERHEAD_BYTES)

    celery = celery_init_app(app)
    app.extensions["result_waiter"] = ResultWaiter(
        celery.backend, poll_interval=app.config["RESULT_POLL_INTERVAL"])
    errors.init_app(app)
    metrics.init_app(app)
    health.init_app(app)

    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(health.bp)
    return app
