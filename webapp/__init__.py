"""Flask front end: takes image uploads and sends classify tasks to Celery workers.

Never imports ``torch`` or ``workers``: tasks are sent by name.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from flask import Flask

from common.config import WebSettings, load
from common.image_store import ImageStore

from . import api, errors, health, metrics, models, models_api, openapi, pages
from .accepted import AcceptedTasks
from .admission import BoundedQueue, QueueLength, WaitingRequests, broker_queue_client
from .celery_ext import celery_init_app
from .results import ResultWaiter
from .uploads import UploadRequest

__all__ = ["MULTIPART_OVERHEAD_BYTES", "SYNC_QUEUE_READ_SECONDS", "WAITING_HEADROOM", "create_app"]

#: Room left in ``MAX_CONTENT_LENGTH`` for the multipart framing and form
#: fields around a file of exactly ``MAX_UPLOAD_MB``.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
#: gunicorn threads per process left free of synchronous waiters when
#: ``MAX_WAITING_REQUESTS`` is unset.
WAITING_HEADROOM = 4
#: How stale a synchronous queue's length may be: short, as its bound is
#: small (an LLEN costs Redis microseconds); the async one is read every 0.1 s.
SYNC_QUEUE_READ_SECONDS = 0.01


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: ``WebSettings`` from the environment, then ``test_config``.

    Each setting becomes the upper-case config key of its field
    (``result_timeout`` -> ``RESULT_TIMEOUT``). A bad variable raises
    ``common.config.ConfigError`` naming it.
    """
    app = Flask(__name__)
    app.request_class = UploadRequest
    settings = load(WebSettings)
    app.config.from_mapping({name.upper(): value for name, value in asdict(settings).items()})
    # Celery settings over celeryconfig and celery_ext's web defaults; a fresh
    # dict per app, so apps never share it.
    app.config["CELERY"] = {}
    if test_config is not None:
        app.config.from_mapping(test_config)
    # Werkzeug answers 413 from Content-Length alone, before reading the body;
    # the file itself is then held to the exact limit in uploads.inspect_image.
    app.config["MAX_UPLOAD_BYTES"] = int(app.config["MAX_UPLOAD_MB"] * 1024 * 1024)
    if app.config.get("MAX_CONTENT_LENGTH") is None:
        app.config["MAX_CONTENT_LENGTH"] = app.config["MAX_UPLOAD_BYTES"] + MULTIPART_OVERHEAD_BYTES

    celery = celery_init_app(app)
    app.extensions["result_waiter"] = ResultWaiter(
        celery.backend, poll_interval=app.config["RESULT_POLL_INTERVAL"])
    _init_admission(app)
    errors.init_app(app)
    metrics.init_app(app)
    metrics.register_backlog(app)
    health.init_app(app)

    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(models_api.bp)
    return app


def _init_admission(app: Flask) -> None:
    """The backlog bound, the waiting slots and the accepted-task records (``webapp.admission``)."""
    config = app.config
    celery = app.extensions["celery"]
    if config.get("MAX_WAITING_REQUESTS") is None:
        # Below gunicorn's threads: a few stay free for /readyz, /tasks and 503s.
        config["MAX_WAITING_REQUESTS"] = max(1, config["WEB_THREADS"] - WAITING_HEADROOM)
    broker_url = str(celery.conf.broker_url)

    def bounded(sync_queue: str, async_queue: str) -> dict[str, BoundedQueue]:
        # A client per queue: each QueueLength reads from one thread at a time, and an
        # AMQP connection must not be shared by two threads at once.
        return {
            "sync": BoundedQueue(QueueLength(broker_queue_client(broker_url, timeout=1.0), sync_queue,
                                             SYNC_QUEUE_READ_SECONDS), config["MAX_SYNC_QUEUE_LENGTH"]),
            "async": BoundedQueue(QueueLength(broker_queue_client(broker_url, timeout=1.0), async_queue),
                                  config["MAX_QUEUE_LENGTH"]),
        }

    # Each model's queues and bounds (webapp.models).
    models.init_app(app, bounded)
    app.extensions["waiting_requests"] = WaitingRequests(config["MAX_WAITING_REQUESTS"])
    by_reference = config["IMAGES_BY_REFERENCE"]
    timeout = float(celery.conf.broker_connection_timeout)
    app.extensions["images"] = ImageStore.for_broker(broker_url, timeout) if by_reference else None
    app.extensions["accepted"] = AcceptedTasks(celery.backend.client)
