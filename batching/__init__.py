"""Dynamic batching for Celery tasks, a drop-in for ``celery-batches``.

Two ways to write a batching task:

* **one class with LitServe's hooks** (:class:`BatchAPI`): ``decode_request``
  per request as it arrives, ``batch`` -> ``predict`` -> ``unbatch`` once per
  batch, ``encode_response`` per request; register it with
  :func:`batch_task` and each request's result is stored under its own id
  (:func:`single_task` registers the same class unbatched);
* **celery-batches' way**: ``@app.task(base=Batches, flush_every=..,
  flush_interval=..)`` on a ``run(requests)`` that stores its own results.

Library code: it reads no environment and knows nothing of what it batches.
The runtime lives in :mod:`batching.consumer`, execution in :mod:`batching.trace`.
"""
from batching.api import BatchAPI
from batching.request import BatchInfo, SimpleRequest
from batching.scheduler import POLICIES
from batching.signals import batch_dispatched, batch_finished, batch_predicted
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
