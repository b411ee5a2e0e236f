"""Exceptions raised by the load-test driver."""

__all__ = ["LoadtestError", "LocustRunError", "StackStartError"]


class LoadtestError(Exception):
    """Base class for load-test driver errors."""


class StackStartError(LoadtestError):
    """The web app or the worker did not come up (it exited, or /readyz never answered 200)."""


class LocustRunError(LoadtestError):
    """A locust run produced no statistics (it crashed, or ran past its time limit)."""
