"""The workers' Celery app; every task's base is Unbatched, so a message of the wrong shape fails alone."""
from __future__ import annotations

import logging

from celery import Celery
from celery.worker.consumer import Consumer as CeleryConsumer
from kombu import Queue

__all__ = ["Consumer", "app", "consume"]

logger = logging.getLogger(__name__)


class Consumer(CeleryConsumer):
    """Celery's consumer, surviving a broker lost mid-close (kombu raises there; it would never consume)."""

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        try:
            super().on_connection_error_after_connected(exc)
        except Exception as close_error:  # noqa: BLE001 - any failure to close a dead connection
            logger.warning("Closing the lost broker connection failed (%r); reconnecting anyway. "
                           "Its unacknowledged messages come back by the visibility timeout at the latest.",
                           close_error)


app = Celery("workers", include=["workers.tasks", "workers.lifecycle"], task_cls="batching:Unbatched")
app.config_from_object("celeryconfig")
app.conf.worker_consumer = "workers.app:Consumer"


def consume(queue: str, async_queue: str) -> None:
    """Consume this worker's model's queues, the synchronous one first (celeryconfig's order)."""
    arguments = app.conf.task_queues[0].queue_arguments
    app.conf.task_default_queue = queue
    app.conf.task_queues = tuple(Queue(name, routing_key=name, queue_arguments=arguments)
                                 for name in (queue, async_queue))
