"""Signals of the batching consumer, for metrics and logs (``celery.utils.dispatch.Signal``)."""
from celery.utils.dispatch import Signal

__all__ = ["batch_dispatched", "batch_finished", "batch_predicted"]

#: In the consumer, when a batch goes to the pool: ``size``, ``wait`` (seconds
#: the oldest request waited), ``queue_depth`` (left buffered), ``expired``
#: (requests dropped because their ``expires`` had passed).
batch_dispatched = Signal(name="batch_dispatched")
#: In the consumer, once a batch's results are stored: ``size``, ``seconds``
#: (time in ``run``, retries included), ``succeeded``, ``failed``.
batch_finished = Signal(name="batch_finished")
#: Where ``predict`` ran (the pool), sender the :class:`~batching.api.BatchAPI`:
#: ``size`` and ``seconds`` of one ``batch`` + ``predict`` + ``unbatch``.
batch_predicted = Signal(name="batch_predicted")
