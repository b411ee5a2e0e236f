"""Exceptions of the worker side that stay in the worker.

The errors a worker reports for a client's input cross the wire and live in
``common.contract``; configuration errors in ``common.config``.
"""

__all__ = ["ModelLoadError"]


class ModelLoadError(RuntimeError):
    """The model or its weights cannot be loaded; the message says how to fix it."""
