"""Exceptions raised by the worker side (model loading, settings, image decoding).

This module imports nothing heavy, so the web app and Celery's result backend
can rebuild these exceptions from a stored failure without importing torch.
"""

__all__ = ["ConfigError", "InvalidImageError", "ModelLoadError"]


class InvalidImageError(ValueError):
    """The request's bytes are not an image the worker accepts (undecodable,
    truncated, an unsupported format, or over the pixel limit)."""


class ModelLoadError(RuntimeError):
    """The model or its weights cannot be loaded; the message says how to fix it."""


class ConfigError(ValueError):
    """A worker setting has a value the worker cannot use."""
