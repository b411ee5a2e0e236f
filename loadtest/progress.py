"""One progress line per phase, with elapsed time and an ETA: the planned seconds still to go,
scaled by how long the finished phases really took against their plan."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m40s``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Counts phases against a plan of ``total_phases`` phases taking ``planned_s`` seconds."""

    def __init__(self, total_phases: int, planned_s: float, stream: TextIO | None = None) -> None:
        if total_phases < 1 or planned_s <= 0:
            raise ValueError("Progress needs total_phases >= 1 and planned_s > 0")
        self.total_phases, self.planned_s, self.stream = total_phases, planned_s, stream or sys.stderr
        self.started = time.monotonic()
        self.done_phases, self.done_planned_s, self._done_elapsed_s, self._current_planned = 0, 0.0, 0.0, 0.0

    def elapsed(self) -> float:
        """Seconds since the plan started."""
        return time.monotonic() - self.started

    def eta(self) -> float:
        """Seconds still to go, by the plan corrected for the pace so far."""
        remaining = max(self.planned_s - self.done_planned_s, 0.0)
        if self.done_planned_s <= 0:
            return remaining
        # Clamp the pace: one phase far off its guess (a cached model, a slow start) must not swing the ETA.
        pace = min(max(self._done_elapsed_s / self.done_planned_s, 0.5), 3.0)
        return remaining * pace

    def start(self, label: str, planned_s: float) -> None:
        """Print the line announcing the next phase."""
        self._current_planned = planned_s
        number = min(self.done_phases + 1, self.total_phases)
        width = len(str(self.total_phases))
        self.stream.write(f"[{number:>{width}}/{self.total_phases} | elapsed {format_seconds(self.elapsed())}"
                          f" | ETA {format_seconds(self.eta())}] {label}\n")
        self.stream.flush()

    def finish(self) -> None:
        """Mark the announced phase as done."""
        self.done_phases += 1
        self.done_planned_s += self._current_planned
        self._done_elapsed_s = self.elapsed()
        self._current_planned = 0.0

    def skip(self, phases: int, planned_s: float) -> None:
        """Drop phases that will not run (a failed session) from the plan."""
        self.total_phases = max(self.total_phases - phases, self.done_phases, 1)
        self.planned_s = max(self.planned_s - planned_s, self.done_planned_s, 1e-9)
