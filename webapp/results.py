"""Waiting for task results from many request threads at once.

Celery's Redis result consumer is not safe when ``AsyncResult.get()`` runs in
many threads (celery #4480, #6335, #3761, #6350). Instead, one listener thread
per process pattern-subscribes to the result keys' channels: Celery's Redis
backend stores a result with SET and then PUBLISHes the same value on a
channel named like the key (``RedisBackend._set``). Each ready-state message
is handed to the request thread registered for that task id.

A message can be missed (the listener was still connecting, or reconnecting),
so a waiter also GETs the key when it starts waiting, every
``poll_interval`` seconds after that, and whenever the listener (re)subscribes.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.exceptions import RedisError

from celery import states

from .exceptions import ResultTimeout

__all__ = ["ResultWaiter"]

logger = logging.getLogger(__name__)

#: Seconds the listener blocks on the socket before checking for shutdown.
_READ_TIMEOUT = 0.5
#: Seconds between reconnection attempts, doubled up to the maximum.
_RECONNECT_MIN, _RECONNECT_MAX = 0.1, 5.0
#: Characters special in a Redis PSUBSCRIBE glob.
_GLOB_SPECIAL = frozenset(b"*?[]\\")


class _Pending:
    """One request thread's slot: the ready meta, once known, and a wake-up."""

    __slots__ = ("event", "meta")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.meta: dict[str, Any] | None = None

    def resolve(self, meta: dict[str, Any]) -> None:
        if self.meta is None:
            self.meta = meta
        self.event.set()


def _escape_glob(prefix: bytes) -> bytes:
    return b"".join(b"\\" + bytes([c]) if c in _GLOB_SPECIAL else bytes([c]) for c in prefix)


def _reset_after_fork(ref: weakref.ReferenceType[ResultWaiter]) -> None:
    waiter = ref()
    if waiter is not None:
        waiter._reset()


class ResultWaiter:
    """Deliver results stored by a Celery Redis backend to waiting threads.

    Register a task id before sending the task (``expecting``), then
    ``wait``. Thread-safe; one instance per app; fork-safe.
    """

    def __init__(self, backend: Any, *, poll_interval: float = 0.5) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        #: The Celery Redis backend: its client, key prefix and decoder.
        self.backend = backend
        #: Seconds between fallback GETs while waiting.
        self.poll_interval = poll_interval
        self._prefix: bytes = backend.task_keyprefix
        self._pattern = _escape_glob(self._prefix) + b"*"
        self._reset()
        # gunicorn may fork after create_app: the child needs fresh locks and
        # its own listener thread (threads do not survive a fork).
        os.register_at_fork(after_in_child=functools.partial(_reset_after_fork, weakref.ref(self)))

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    # -- registration -------------------------------------------------------

    def register(self, task_id: str) -> None:
        """Start collecting the result of ``task_id``; call before sending it."""
        if not task_id:
            raise ValueError("task_id must be a non-empty string")
        with self._lock:
            if task_id in self._pending:
                raise ValueError(f"task {task_id} is already registered")
            self._pending[task_id] = _Pending()

    def discard(self, task_id: str) -> None:
        """Stop collecting the result of ``task_id`` (idempotent)."""
        with self._lock:
            self._pending.pop(task_id, None)

    @contextmanager
    def expecting(self, task_id: str) -> Iterator[None]:
        """Register ``task_id`` for the duration of the block."""
        self.register(task_id)
        try:
            yield
        finally:
            self.discard(task_id)

    # -- waiting ------------------------------------------------------------

    def wait(self, task_id: str, timeout: float) -> dict[str, Any]:
        """Return the ready meta of ``task_id``; raise ``ResultTimeout`` after ``timeout`` s.

        The meta is Celery's decoded dict: ``status``, ``result``, ``task_id``...
        Registers ``task_id`` itself when the caller did not.
        """
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        deadline = time.monotonic() + timeout
        with self._lock:
            pending = self._pending.get(task_id)
            owned = pending is None
            if pending is None:
                pending = self._pending[task_id] = _Pending()
        try:
            self._ensure_listener()
            return self._wait(task_id, pending, deadline, timeout)
        finally:
            if owned:
                self.discard(task_id)

    def _wait(self, task_id: str, pending: _Pending, deadline: float, timeout: float) -> dict[str, Any]:
        while True:
            # Cleared before looking, so a resolve or nudge that lands after
            # the look still ends the next event.wait() at once.
            pending.event.clear()
            if pending.meta is not None:
                return pending.meta
            meta = self._get_ready(task_id)
            if meta is not None:
                return meta
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ResultTimeout(task_id, timeout)
            pending.event.wait(min(self.poll_interval, remaining))

    def fetch(self, task_id: str) -> dict[str, Any] | None:
        """GET the stored meta of ``task_id``, or None when nothing is stored yet."""
        raw = self.backend.client.get(self.backend.get_key_for_task(task_id))
        if raw is None:
            return None
        meta: dict[str, Any] = self.backend.decode(raw)
        return meta

    def _get_ready(self, task_id: str) -> dict[str, Any] | None:
        try:
            meta = self.fetch(task_id)
        except RedisError as exc:
            # The listener or the next poll may still deliver; the deadline
            # bounds the wait either way. Debug: during an outage every
            # waiting thread gets here twice a second, and the listener
            # already logs the outage.
            logger.debug("Fallback GET for task %s failed: %s", task_id, exc)
            return None
        if meta is not None and meta.get("status") in states.READY_STATES:
            return meta
        return None

    # -- the listener thread ------------------------------------------------

    def _ensure_listener(self) -> None:
        with self._lock:
            thread = self._thread
            if thread is not None and thread.is_alive() and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._listen, args=(self._stop,), name="result-listener", daemon=True)
            self._thread.start()
        logger.info("Started result listener in process %s on %r", self._pid, self._pattern)

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
                try:
                    pubsub.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    logger.debug("Closing the result listener's connection failed", exc_info=True)
            if stop.wait(delay):
                break
            delay = min(delay * 2, _RECONNECT_MAX)

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "psubscribe":
            # (Re)subscribed: anything published while we were not is only
            # in the keys, so every waiter looks now instead of at its next poll.
            self._nudge_all()
        elif kind == "pmessage":
            self._dispatch(message["channel"], message["data"])

    def _nudge_all(self) -> None:
        with self._lock:
            waiting = list(self._pending.values())
        for pending in waiting:
            pending.event.set()

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        task_id = channel[len(self._prefix):].decode("utf-8", "replace")
        with self._lock:
            pending = self._pending.get(task_id)
        if pending is None:
            return  # another process's request, or one that gave up
        try:
            meta = self.backend.decode(data)
            ready = meta.get("status") in states.READY_STATES
        except Exception:  # noqa: BLE001 - a bad payload must not drop the connection
            logger.exception("Undecodable result message for task %s", task_id)
            return
        if ready:
            pending.resolve(meta)
