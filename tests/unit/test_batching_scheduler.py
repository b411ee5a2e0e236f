"""The dispatch rules, on a clock we move by hand."""
from __future__ import annotations

from typing import Any

import pytest

from batching.scheduler import BatchScheduler, CostModel


def test_full_batch_is_due_at_once() -> None:
    s: BatchScheduler[int] = BatchScheduler(max_size=3, timeout=2.0)
    for i in range(4):
        s.add(i, now=0.0)
    assert s.take(now=0.0) == [0, 1, 2]
    assert s.take(now=0.0) == [] and len(s) == 1  # one left, deadline not reached
    assert s.drain() == [3] and len(s) == 0


def test_partial_batch_is_due_at_the_oldest_requests_deadline_not_on_a_repeating_timer() -> None:
    s: BatchScheduler[str] = BatchScheduler(max_size=4, timeout=2.0)
    s.add("a", now=10.0)
    s.add("b", now=11.5)
    assert s.wakeup_at(now=11.5) == 12.0  # the oldest's deadline, not the newest's
    assert s.take(now=11.99) == []
    assert s.take(now=12.0) == ["a", "b"] and s.wakeup_at(now=12.0) is None
    s.add("c", now=12.1)  # just after a dispatch: it gets its full timeout
    assert s.take(now=14.0) == [] and s.wakeup_at(now=14.0) == pytest.approx(14.1)


@pytest.mark.parametrize(("observed", "arrivals"), [([], [0.0]), ([(1, 0.011), (4, 0.014)], [0.0, 0.5])],
                         ids=["no-cost-model-yet", "arrivals-slower-than-the-10ms-overhead"])
def test_adaptive_dispatches_at_once_when_waiting_cannot_pay(observed: list[tuple[int, float]],
                                                             arrivals: list[float]) -> None:
    s: BatchScheduler[int] = BatchScheduler(max_size=8, timeout=2.0, policy="adaptive")
    for size, seconds in observed:
        s.cost.observe(size, seconds)
    for i, now in enumerate(arrivals):
        s.add(i, now=now)
    assert s.take(now=arrivals[-1]) == list(range(len(arrivals)))


def test_adaptive_waits_when_the_next_request_is_cheaper_than_a_batch_overhead() -> None:
    s: BatchScheduler[int] = BatchScheduler(max_size=8, timeout=2.0, policy="adaptive")
    for size, seconds in [(1, 0.110), (2, 0.120), (4, 0.140), (8, 0.180)]:  # 100 ms fixed cost
        s.cost.observe(size, seconds)
    for i in range(3):  # arrivals every 10 ms
        s.add(i, now=i * 0.010)
    assert s.take(now=0.021) == []  # the next one is due in ~9 ms, saving ~100 ms
    assert s.wakeup_at(now=0.021) == pytest.approx(0.030)
    assert s.take(now=0.031) == [0, 1, 2]  # it did not come: stop waiting


def test_cost_model_fits_a_line() -> None:
    model = CostModel(decay=1.0)
    assert model.fixed == 0.0  # nothing to fit yet
    model.observe(4, 0.045)
    assert model.fixed == 0.0  # one size cannot give a line
    for size in (1, 2, 8):
        model.observe(size, 0.005 + 0.010 * size)
    assert model.fixed == pytest.approx(0.005)


@pytest.mark.parametrize("kwargs", [
    {"max_size": 0, "timeout": 1.0}, {"max_size": 2, "timeout": 0.0},
    {"max_size": 2, "timeout": 1.0, "policy": "greedy"}, {"max_size": True, "timeout": 1.0},
])
def test_bad_arguments_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BatchScheduler(**kwargs)
