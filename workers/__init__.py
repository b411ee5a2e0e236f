"""Celery workers holding an image-classification model; importing it loads no torch (Flower imports it)."""
from workers.app import app

__all__ = ["app"]
