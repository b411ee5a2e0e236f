"""The workers' Celery application (``celery -A workers ...``).

Every task's base is :class:`batching.Unbatched` (``workers.classify_batch``
is a :class:`batching.Batches`): a message of the wrong shape fails alone
instead of stopping the worker.
"""
from celery import Celery

__all__ = ["app"]

app = Celery("workers", include=["workers.tasks", "workers.lifecycle"], task_cls="batching:Unbatched")
app.config_from_object("celeryconfig")
# Survives a Redis restart that kombu's channel close would otherwise turn fatal.
app.conf.worker_consumer = "workers.consumer:Consumer"
