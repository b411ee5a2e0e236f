"""Entry point for gunicorn (``python -m deploy.stack exec web``)."""
from . import create_app

__all__ = ["app"]

app = create_app()
