"""Task results for many threads (Celery's result consumer is not thread-safe): one listener per process."""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, cast

from redis.exceptions import RedisError

from celery import states

from .errors import ApiError

__all__ = ["POLL_INTERVAL", "ResultWaiter"]

logger = logging.getLogger(__name__)

#: Seconds between a waiter's fallback GETs; the listener's socket read before checking for shutdown.
POLL_INTERVAL = _READ_TIMEOUT = 0.5
#: Seconds between reconnection attempts, doubled up to the maximum.
_RECONNECT_MIN, _RECONNECT_MAX = 0.1, 5.0


@dataclass(slots=True)
class _Pending:
    event: threading.Event = field(default_factory=threading.Event)
    meta: dict[str, Any] | None = None


def _reset_after_fork(ref: weakref.ReferenceType[ResultWaiter]) -> None:
    waiter = ref()
    if waiter is not None:
        waiter._reset()


class ResultWaiter:
    """Results to waiting threads: ``expecting`` a task id before sending it, then ``wait``; fork-safe."""

    def __init__(self, backend: Any, *, poll_interval: float = POLL_INTERVAL) -> None:
        self.backend, self.poll_interval = backend, poll_interval
        self._prefix: bytes = backend.task_keyprefix
        escaped = (b"\\" + bytes([c]) if c in b"*?[]\\" else bytes([c]) for c in self._prefix)  # glob-special
        self._pattern = b"".join(escaped) + b"*"
        self._reset()
        # gunicorn may fork after create_app: the child needs fresh locks and its own listener.
        os.register_at_fork(after_in_child=functools.partial(_reset_after_fork, weakref.ref(self)))

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @contextmanager
    def expecting(self, task_id: str) -> Iterator[None]:
        """Collect the result of ``task_id`` during the block (enter it before sending)."""
        with self._lock:
            self._pending[task_id] = _Pending()
        try:
            yield
        finally:
            with self._lock:
                self._pending.pop(task_id, None)

    def wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        """The ready meta of ``task_id``, inside its ``expecting`` block; 504 ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            pending = self._pending[task_id]
        self._ensure_listener()
        while True:
            pending.event.clear()  # before looking: a message landing after the look ends the wait
            meta = pending.meta or self._get_ready(task_id)
            if meta is not None:
                return meta
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ApiError("timeout", f"no result for task {task_id} within {timeout:g} s")
            pending.event.wait(min(self.poll_interval, remaining))

    def fetch(self, task_id: str) -> dict[str, Any] | None:
        raw = self.backend.client.get(self.backend.get_key_for_task(task_id))
        return None if raw is None else cast(dict[str, Any], self.backend.decode(raw))

    def _get_ready(self, task_id: str) -> dict[str, Any] | None:
        try:
            meta = self.fetch(task_id)
        except RedisError as exc:  # the listener or the next poll may deliver (the listener logs it)
            logger.debug("Fallback GET for task %s failed: %s", task_id, exc)
            return None
        return meta if meta is not None and meta.get("status") in states.READY_STATES else None

    def _ensure_listener(self) -> None:
        with self._lock:
            thread = self._thread
            if thread is not None and thread.is_alive():
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._listen, args=(self._stop,), name="result-listener", daemon=True)
            self._thread.start()
        logger.info("Started result listener in process %s on %r", os.getpid(), self._pattern)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the listener thread (waiters fall back to polling until restarted)."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _listen(self, stop: threading.Event) -> None:
        delay = _RECONNECT_MIN
        while not stop.is_set():
            pubsub = self.backend.client.pubsub()
            try:
                pubsub.psubscribe(self._pattern)
                while not stop.is_set():
                    message = pubsub.get_message(timeout=_READ_TIMEOUT)
                    if message is not None:
                        self._on_message(message)
                        delay = _RECONNECT_MIN
            except RedisError as exc:
                logger.warning("Result listener lost Redis (%s); reconnecting in %.1f s", exc, delay)
            except Exception:  # noqa: BLE001 - the listener must outlive any bad message
                logger.exception("Result listener failed; restarting in %.1f s", delay)
            finally:
                with suppress(Exception):  # closing a broken connection
                    pubsub.close()
            if stop.wait(delay):
                break
            delay = min(delay * 2, _RECONNECT_MAX)

    def _on_message(self, message: dict[str, Any]) -> None:
        if message["type"] == "psubscribe":  # what was published meanwhile is only in the keys: look now
            with self._lock:
                waiting = list(self._pending.values())
            for pending in waiting:
                pending.event.set()
        elif message["type"] == "pmessage":
            task_id = message["channel"][len(self._prefix):].decode("utf-8", "replace")
            with self._lock:
                slot = self._pending.get(task_id)
            if slot is None:
                return  # another process's request, or one that gave up
            try:
                meta = self.backend.decode(message["data"])
                ready = meta.get("status") in states.READY_STATES
            except Exception:  # noqa: BLE001 - a bad payload must not drop the connection
                logger.exception("Undecodable result message for task %s", task_id)
                return
            if ready:
                slot.meta = slot.meta or meta
                slot.event.set()
