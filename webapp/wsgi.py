"""Entry point for gunicorn (``python -m deploy.stack exec web``); ``celery_app`` for ``celery -A``."""
from celery import Celery

from . import create_app

__all__ = ["app", "celery_app"]

app = create_app()
celery_app: Celery = app.extensions["celery"]
