"""Celery workers holding an image-classification model.

Importing this package loads no model and no torch: Flower and ``celery -A
workers inspect`` import it too. The model is loaded once per worker process
at start (``workers.lifecycle``).
"""
from workers.app import app

__all__ = ["app"]
