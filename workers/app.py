"""The workers' Celery application (``celery -A workers ...``)."""
from celery import Celery

__all__ = ["app"]

app = Celery("workers", include=["workers.tasks", "workers.lifecycle"])
app.config_from_object("celeryconfig")
