"""Entry point: ``gunicorn -c webapp/gunicorn.conf.py webapp.wsgi:app``.

``celery_app`` is the web app's Celery handle (e.g. ``celery -A webapp.wsgi inspect ping``).
"""
from celery import Celery

from . import create_app

__all__ = ["app", "celery_app"]

app = create_app()
celery_app: Celery = app.extensions["celery"]
