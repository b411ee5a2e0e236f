"""A watchdog for hung forward passes: the worker ends itself so its supervisor restarts it.

A forward pass that never returns (a wedged GPU driver, a deadlock in a native
library) holds a pool thread forever, and the threads pool has no time limit
(Celery's time limits need prefork). A daemon thread notices a task that has
run longer than ``FORWARD_TIMEOUT`` and exits the process: it then stops
answering pings and readiness, supervisord (or compose) starts a fresh one,
and the broker hands the unacknowledged messages to a live worker.

``FORWARD_TIMEOUT`` (50 s by default) sits above ``TASK_TIME_LIMIT`` (45 s),
so under prefork Celery's own limit acts first, and below the broker's
visibility timeout (60 s), so the hung work is not redelivered to another
worker while this one could still finish it and store a second result.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import signals

__all__ = ["EXIT_CODE", "Watchdog", "install"]

logger = logging.getLogger(__name__)

#: The worker's exit status when its watchdog ends it (EX_SOFTWARE).
EXIT_CODE = 70


def _exit(task_id: str, seconds: float) -> None:
    logger.critical("Task %s has run for %.0fs, over FORWARD_TIMEOUT: the forward pass is hung; "
                    "exiting so that a fresh worker takes over", task_id, seconds)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(EXIT_CODE)  # a hung thread cannot be stopped; a normal exit would wait for it


class Watchdog:
    """Tracks running tasks; :meth:`check` names one over ``limit`` seconds."""

    def __init__(self, limit: float, on_hang: Callable[[str, float], None] = _exit,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
            raise ValueError(f"limit must be positive seconds, e.g. 50; got {limit!r}")
        self.limit = float(limit)
        self._on_hang = on_hang
        self._clock = clock
        self._running: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def started(self, task_id: str) -> None:
        with self._lock:
            self._running[task_id] = self._clock()

    def finished(self, task_id: str) -> None:
        with self._lock:
            self._running.pop(task_id, None)

    def check(self) -> tuple[str, float] | None:
        """The longest-running task and its seconds, if over the limit; else None."""
        now = self._clock()
        with self._lock:
            if not self._running:
                return None
            task_id, since = min(self._running.items(), key=lambda item: item[1])
        return (task_id, now - since) if now - since > self.limit else None

    def run(self) -> None:
        """Check a few times per limit until stopped; ``on_hang`` the first hung task."""
        interval = min(1.0, self.limit / 4)
        while not self._stop.wait(interval):
            hung = self.check()
            if hung is not None:
                self._on_hang(*hung)
                return

    def stop(self) -> None:
        self._stop.set()


_installed: Watchdog | None = None


def install(limit: float) -> Watchdog:
    """Watch every task of this process (once per process): task_prerun to task_postrun."""
    global _installed
    if _installed is not None:
        return _installed
    watchdog = _installed = Watchdog(limit)

    def on_prerun(task_id: str = "", **_: Any) -> None:
        watchdog.started(task_id)

    def on_postrun(task_id: str = "", **_: Any) -> None:
        watchdog.finished(task_id)

    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    threading.Thread(target=watchdog.run, name="forward-watchdog", daemon=True).start()
    logger.info("Forward-pass watchdog on: a task running over %.0fs ends the worker", limit)
    return watchdog
