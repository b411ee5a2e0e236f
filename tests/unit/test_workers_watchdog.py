"""The forward-pass watchdog, with its clock and its exit as seams."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

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


def test_the_watch_thread_calls_on_hang_once_for_a_hung_task() -> None:
    hung: list[tuple[str, float]] = []
    fired = threading.Event()

    def on_hang(task_id: str, seconds: float) -> None:
        hung.append((task_id, seconds))
        fired.set()

    dog = Watchdog(0.05, on_hang=on_hang)
    dog.started("stuck")
    thread = threading.Thread(target=dog.run, daemon=True)
    thread.start()
    assert fired.wait(10)
    thread.join(10)
    assert not thread.is_alive() and [task_id for task_id, _ in hung] == ["stuck"]
    assert hung[0][1] > 0.05


@pytest.mark.parametrize("limit", [0, -1, True, "50"])
def test_the_limit_must_be_positive_seconds(limit: object) -> None:
    with pytest.raises(ValueError, match="limit must be positive seconds"):
        Watchdog(limit)  # type: ignore[arg-type]
