"""Optional API keys: ``Authorization: Bearer <key>`` on ``/predict`` and ``/tasks/<id>``.

Off unless ``API_KEYS`` is set (in the environment only). Keys are compared
in constant time, each against every configured key, and a task is tied to
the SHA-256 of the key that created it (``webapp.accepted``), never the key.
"""
from __future__ import annotations

import hashlib
import hmac

from flask import Flask, Request

from .exceptions import Unauthorized

__all__ = ["ANONYMOUS", "caller", "key_hash"]

#: The owner of every task when keys are off.
ANONYMOUS = ""


def key_hash(key: str) -> str:
    """What is stored for a key: its SHA-256, hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def caller(app: Flask, request: Request) -> str:
    """The hash of the request's valid key (ANONYMOUS when keys are off); Unauthorized otherwise."""
    keys: tuple[str, ...] | None = app.config.get("API_KEYS")
    if not keys:
        return ANONYMOUS
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        raise Unauthorized("send an API key: Authorization: Bearer <key>")
    encoded = given.encode("utf-8", "replace")
    # No early exit: the time taken does not depend on which key matched.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(encoded, key.encode("utf-8"))
    if not matched:
        raise Unauthorized("the API key is not valid")
    return key_hash(given)
