"""The one place the web app reads its environment variables.

Celery's own settings (broker, backend) come from ``celeryconfig``; gunicorn's
from ``webapp/gunicorn.conf.py``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import defaults

__all__ = ["from_environ", "parse_bool"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def parse_bool(value: str) -> bool:
    """Read ``true/false``, ``1/0``, ``yes/no`` or ``on/off`` (any case)."""
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _positive(cast: Callable[[str], float]) -> Callable[[str], Any]:
    def parse(value: str) -> Any:
        number = cast(value)
        if number <= 0:
            raise ValueError(f"expected a positive number, got {value!r}")
        return number

    return parse


def _top_k(value: str) -> int:
    number = int(value)
    if not 1 <= number <= defaults.MAX_TOP_K:
        raise ValueError(f"expected 1..{defaults.MAX_TOP_K}, got {value!r}")
    return number


#: Environment variable -> parser; the config key has the same name.
_PARSERS: dict[str, Callable[[str], Any]] = {
    "MAX_UPLOAD_MB": _positive(float),
    "MAX_IMAGE_PIXELS": _positive(int),
    "RESULT_TIMEOUT": _positive(float),
    "RESULT_POLL_INTERVAL": _positive(float),
    "DEFAULT_TOP_K": _top_k,
    "USE_BATCH_PROCESSING": parse_bool,
    "READY_CACHE_SECONDS": _positive(float),
    # Also read by prometheus_client itself; here so /metrics knows to merge.
    "PROMETHEUS_MULTIPROC_DIR": str,
}


def from_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """Return the config overrides set in ``environ``; ValueError names a bad one."""
    overrides: dict[str, Any] = {}
    for name, parse in _PARSERS.items():
        raw = environ.get(name)
        if raw is None:
            continue
        try:
            overrides[name] = parse(raw)
        except ValueError as exc:
            raise ValueError(f"environment variable {name}={raw!r} is invalid: {exc}") from None
    return overrides
