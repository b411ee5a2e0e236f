"""The worker's Celery consumer: Celery's own, surviving a broker that goes away mid-close.

When Redis restarts, Celery's consumer closes the lost connection before it
reconnects; kombu's Redis channel then tries to put its unacknowledged
messages back through a client that is already gone and raises
``AttributeError`` (kombu 5.7, ``Channel._connparams``), which the consumer
treats as unrecoverable: the process stays up but never consumes again.
Those messages are still in Redis' unacked set and come back after the
visibility timeout, so the close's failure is logged and the reconnect goes on.
"""
from __future__ import annotations

import logging

from celery.worker.consumer import Consumer as CeleryConsumer

__all__ = ["Consumer"]

logger = logging.getLogger(__name__)


class Consumer(CeleryConsumer):
    """``worker_consumer`` for the workers' app (``workers/app.py``)."""

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        """Celery's handling of a lost connection, minus a crash while closing it."""
        try:
            super().on_connection_error_after_connected(exc)
        except Exception as close_error:  # noqa: BLE001 - any failure to close a dead connection
            logger.warning("Closing the lost broker connection failed (%r); reconnecting anyway. "
                           "Its unacknowledged messages come back after the visibility timeout.",
                           close_error)
