"""The forward-pass watchdog, with its clock and its exit as seams (its thread, ending a real
worker: tests/integration/test_worker_faults.py)."""
from __future__ import annotations

from types import SimpleNamespace

from workers.watchdog import Watchdog


def test_a_task_over_the_limit_is_named_and_a_finished_one_forgotten() -> None:
    clock = SimpleNamespace(now=0.0)
    dog = Watchdog(50, on_hang=lambda *_: None, clock=lambda: clock.now)
    dog.started("quick")
    dog.started("stuck")
    clock.now = 49.0
    assert dog.check() is None
    dog.finished("quick")
    clock.now = 50.5
    assert dog.check() == ("stuck", 50.5)
    dog.finished("stuck")
    assert dog.check() is None

