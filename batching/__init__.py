"""Dynamic batching for Celery tasks, a drop-in for ``celery-batches`` (docs/batching.md).

Write one :class:`BatchAPI` with LitServe's hooks and register it with :func:`batch_task`
(or unbatched with :func:`single_task`), or write celery-batches' ``run(requests)`` on
``base=Batches``. Library code: it reads no environment and knows nothing of what it batches.
"""
from batching.api import BatchAPI, BatchInfo, SimpleRequest, batch_dispatched, batch_finished, batch_predicted
from batching.scheduler import POLICIES
from batching.task import Batches, Unbatched, batch_task, single_task

__all__ = [
    "POLICIES",
    "BatchAPI",
    "BatchInfo",
    "Batches",
    "SimpleRequest",
    "Unbatched",
    "batch_dispatched",
    "batch_finished",
    "batch_predicted",
    "batch_task",
    "single_task",
]
