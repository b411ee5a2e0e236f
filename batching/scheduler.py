"""When to hand a batch to the model (docs/batching.md, ``batch_policy``): pure logic, the clock passed in."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["POLICIES", "BatchScheduler", "CostModel"]

T = TypeVar("T")

POLICIES = ("timeout", "adaptive")


@dataclass(frozen=True)
class _Buffered(Generic[T]):
    item: T
    arrived: float


class CostModel:
    """Batch cost as a line, ``fixed + per_item * n``, fitted over decayed sums to follow the load."""

    def __init__(self, decay: float = 0.95) -> None:
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay!r}")
        self._decay = decay
        self._w = self._sx = self._sy = self._sxx = self._sxy = 0.0

    def observe(self, size: int, seconds: float) -> None:
        d = self._decay
        self._w = self._w * d + 1.0
        self._sx = self._sx * d + size
        self._sy = self._sy * d + seconds
        self._sxx = self._sxx * d + size * size
        self._sxy = self._sxy * d + size * seconds

    def _line(self) -> tuple[float, float] | None:
        var = self._w * self._sxx - self._sx * self._sx
        if self._w < 2 or var <= 1e-9:  # fewer than two distinct sizes seen
            return None
        slope = (self._w * self._sxy - self._sx * self._sy) / var
        return (self._sy - slope * self._sx) / self._w, slope

    @property
    def fixed(self) -> float:
        """Estimated per-batch overhead in seconds (0 until it can be fitted)."""
        line = self._line()
        return max(0.0, line[0]) if line else 0.0


class BatchScheduler(Generic[T]):
    """A FIFO whose head is due when full, past ``timeout``, or (``adaptive``) when waiting would not pay."""

    def __init__(self, max_size: int, timeout: float, policy: str = "timeout") -> None:
        if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1:
            raise ValueError(f"max_size must be a positive integer, got {max_size!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.max_size = max_size
        self.timeout = float(timeout)
        self.policy = policy
        self.cost = CostModel()
        self._queue: deque[_Buffered[T]] = deque()
        self._last_arrival: float | None = None
        self._mean_gap: float | None = None

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, item: T, now: float) -> None:
        if self._last_arrival is not None:
            gap = max(0.0, now - self._last_arrival)
            self._mean_gap = gap if self._mean_gap is None else 0.8 * self._mean_gap + 0.2 * gap
        self._last_arrival = now
        self._queue.append(_Buffered(item, now))

    def oldest_age(self, now: float) -> float:
        return now - self._queue[0].arrived if self._queue else 0.0

    def take(self, now: float) -> list[T]:
        """Pop the batch due now, for a free model; ``[]`` when none is."""
        if not self._queue:
            return []
        due = (
            len(self._queue) >= self.max_size
            or now - self._queue[0].arrived >= self.timeout
            or (self.policy == "adaptive" and not self._worth_waiting(now))
        )
        if not due:
            return []
        count = min(self.max_size, len(self._queue))
        return [self._queue.popleft().item for _ in range(count)]

    def drain(self) -> list[T]:
        """Pop everything buffered (a reconnect)."""
        items = [entry.item for entry in self._queue]
        self._queue.clear()
        return items

    def wakeup_at(self, now: float) -> float | None:
        """When the head becomes due with no new arrival (None if empty)."""
        if not self._queue:
            return None
        deadline = self._queue[0].arrived + self.timeout
        expected = self._expected_arrival()
        if self.policy == "adaptive" and expected is not None and now < expected < deadline:
            return expected
        return deadline

    def _expected_arrival(self) -> float | None:
        if self._last_arrival is None or self._mean_gap is None:
            return None
        return self._last_arrival + self._mean_gap

    def _worth_waiting(self, now: float) -> bool:
        expected = self._expected_arrival()
        if expected is None or expected <= now:
            return False
        return expected - now < self.cost.fixed
