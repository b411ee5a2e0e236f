"""A watchdog for hung forward passes (the threads pool has no time limit): ends the process."""
from __future__ import annotations

import functools
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
        self.limit, self._on_hang, self._clock = float(limit), on_hang, clock
        self._running: dict[str, float] = {}
        self._lock = threading.Lock()

    def started(self, task_id: str = "", **_: Any) -> None:
        with self._lock:
            self._running[task_id] = self._clock()

    def finished(self, task_id: str = "", **_: Any) -> None:
        with self._lock:
            self._running.pop(task_id, None)

    def check(self) -> tuple[str, float] | None:
        """The longest-running task and its seconds, if over the limit; else None."""
        now = self._clock()
        with self._lock:
            task_id, since = min(self._running.items(), key=lambda item: item[1], default=("", now))
        return (task_id, now - since) if now - since > self.limit else None

    def run(self) -> None:
        """Check a few times per limit; ``on_hang`` the first hung task, then return."""
        while (hung := self.check()) is None:
            time.sleep(min(1.0, self.limit / 4))
        self._on_hang(*hung)


@functools.cache  # once per process
def install(limit: float) -> Watchdog:
    """Watch every task of this process, task_prerun to task_postrun."""
    watchdog = Watchdog(limit)
    signals.task_prerun.connect(watchdog.started, weak=False)
    signals.task_postrun.connect(watchdog.finished, weak=False)
    threading.Thread(target=watchdog.run, name="forward-watchdog", daemon=True).start()
    logger.info("Forward-pass watchdog on: a task running over %.0fs ends the worker", limit)
    return watchdog
