"""What one would write by hand: Flask under gunicorn, one Celery task per image (msgpack: bytes as
they are), Redis between; no batching, admission control, deadlines or metrics: the baseline those
cost against.
"""

from __future__ import annotations

import functools
import os
from typing import TYPE_CHECKING, Any

from flask import Flask, abort, request

from celery import Celery
from celery.signals import worker_process_init

if TYPE_CHECKING:
    from .classify import Classifier

_REDIS_URL = os.environ.get("PLAIN_REDIS_URL", "redis://127.0.0.1:6379/0")

celery_app = Celery("plain", broker=_REDIS_URL, backend=_REDIS_URL)
celery_app.conf.update(
    task_serializer="msgpack", result_serializer="json", accept_content=["msgpack", "json"],
    task_default_queue=os.environ.get("PLAIN_QUEUE", "plain"), worker_prefetch_multiplier=1,
    result_expires=300,
)
flask_app = Flask(__name__)


@functools.cache
def _classifier() -> Classifier:
    """One per pool process, loaded as it starts (not in the parent: torch and fork)."""
    from .classify import Classifier

    threads = os.environ.get("TORCH_THREADS")
    return Classifier(int(threads) if threads else None)


@worker_process_init.connect
def _load_model(**_kwargs: Any) -> None:
    _classifier().warmup()


@celery_app.task(name="plain.classify")
def classify(image: bytes) -> dict[str, Any]:
    classifier = _classifier()
    probabilities = classifier.predict(classifier.preprocess(image).unsqueeze(0))[0]
    return classifier.answer(probabilities, "plain-celery", 1)


@flask_app.post("/predict")
def predict() -> dict[str, Any]:
    upload = request.files.get("file")
    if not (image := upload.read() if upload is not None else request.get_data()):
        abort(400, "no image")
    result: dict[str, Any] = classify.delay(image).get(timeout=30.0)
    return result


@flask_app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
