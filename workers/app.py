"""The workers' Celery application (``celery -A workers ...``).

Every task's base is :class:`batching.Unbatched` (``workers.classify_batch``
is a :class:`batching.Batches`): a message of the wrong shape fails alone
instead of stopping the worker.
"""
from celery import Celery
from kombu import Queue

__all__ = ["app", "consume"]

app = Celery("workers", include=["workers.tasks", "workers.lifecycle"], task_cls="batching:Unbatched")
app.config_from_object("celeryconfig")
# Survives a Redis restart that kombu's channel close would otherwise turn fatal.
app.conf.worker_consumer = "workers.consumer:Consumer"


def consume(queue: str, async_queue: str) -> None:
    """Consume this worker's model's queues, the synchronous one first (celeryconfig's order)."""
    arguments = app.conf.task_queues[0].queue_arguments
    app.conf.task_default_queue = queue
    app.conf.task_queues = tuple(Queue(name, routing_key=name, queue_arguments=arguments)
                                 for name in (queue, async_queue))
