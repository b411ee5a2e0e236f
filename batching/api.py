"""The one class a user writes: LitServe's hooks, run by the batching consumer.

``decode_request`` runs per request as it arrives (overlapping the batch in
flight), ``batch`` -> ``predict`` -> ``unbatch`` once per batch, and
``encode_response`` per request; the library stores each encoded value as
that request's result, then calls ``release`` once for the batch. Register it
with :func:`batching.batch_task`.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from kombu.utils.uuid import uuid

from batching.request import BatchInfo, SimpleRequest
from batching.signals import batch_predicted

__all__ = ["BatchAPI"]


class BatchAPI:
    """Override ``predict`` (and usually ``setup``, ``decode_request``, ``encode_response``)."""

    def __init__(self) -> None:
        self._setup_lock = threading.Lock()
        self._is_set_up = False

    # -- hooks, in the order they run -------------------------------------------

    def setup(self) -> None:
        """Load the model; runs once per process, before the first decode or predict."""

    def decode_request(self, request: SimpleRequest) -> Any:
        """One request's input for ``batch``; raising fails that request alone."""
        return request.args[0] if len(request.args) == 1 else request.args

    def batch(self, inputs: list[Any]) -> Any:
        """Combine decoded inputs into what ``predict`` takes (default: the list)."""
        return inputs

    def predict(self, batch: Any) -> Any:
        """Run the model once over a batch."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict(batch)")

    def unbatch(self, output: Any) -> Sequence[Any]:
        """Split ``predict``'s output into one value per input (default: ``list(output)``)."""
        return list(output)

    def encode_response(self, output: Any, request: SimpleRequest) -> Any:
        """The result stored for ``request`` (default: its output as is)."""
        return output

    def release(self, requests: Sequence[SimpleRequest]) -> None:
        """Called once these requests' results are stored (whatever their state), or when
        they turn out to need none (redelivered after their result was stored): free what
        ``decode_request`` may still need until then. Errors are logged, never raised."""

    # -- driving the hooks ---------------------------------------------------------

    def ensure_setup(self) -> None:
        """Run :meth:`setup` unless this process already did (thread-safe)."""
        if self._is_set_up:
            return
        with self._setup_lock:
            if not self._is_set_up:
                self.setup()
                self._is_set_up = True

    def decode(self, request: SimpleRequest) -> SimpleRequest:
        """Set ``request.decoded``; returns the request."""
        self.ensure_setup()
        request.decoded = self.decode_request(request)
        return request

    def handle(self, requests: Sequence[SimpleRequest]) -> list[Any]:
        """One forward pass over decoded requests; one encoded result per request, in order."""
        if not requests:
            raise ValueError("handle() needs at least one request")
        self.ensure_setup()
        started_at, begin = time.time(), time.perf_counter()
        outputs = list(self.unbatch(self.predict(self.batch([r.decoded for r in requests]))))
        if len(outputs) != len(requests):
            raise RuntimeError(f"{type(self).__name__}.unbatch returned {len(outputs)} outputs "
                               f"for {len(requests)} requests")
        info = BatchInfo(uuid(), len(requests), started_at, time.perf_counter() - begin)
        batch_predicted.send(sender=self, size=info.size, seconds=info.seconds)
        results = []
        for request, output in zip(requests, outputs):
            request.batch = info
            results.append(self.encode_response(output, request))
        return results

    def __call__(self, request: SimpleRequest) -> Any:
        """Serve one request end to end, as a batch of one (individual tasks, ``apply``)."""
        return self.handle([self.decode(request)])[0]
