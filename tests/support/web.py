"""Web apps made in a test process and closed when the test is done."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask

from webapp import create_app

__all__ = ["web_apps"]


def web_apps(config_of: Callable[[dict[str, Any]], dict[str, Any]]) -> Iterator[Callable[..., Flask]]:
    """A maker of apps configured by ``config_of(overrides)``, closed when the caller's fixture ends."""
    apps: list[Flask] = []

    def make(**config: Any) -> Flask:
        apps.append(create_app(config_of(config)))
        return apps[-1]

    yield make
    for app in apps:
        app.extensions["dispatcher"].waiter.close()
        app.extensions["celery"].close()
