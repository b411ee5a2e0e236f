"""apply_batch in the pool: celery-batches' signals per run call, results per request, bisection."""
from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from typing import Any

import pytest

from celery import Celery, current_task, signals, states
from kombu.utils.uuid import uuid

from batching import BatchAPI, Batches, SimpleRequest, batch_task
from batching.trace import apply_batch


class Poisonable(BatchAPI):
    def decode_request(self, request: SimpleRequest) -> str:
        if request.args[0] == "undecodable":
            raise ValueError("cannot decode")
        return str(request.args[0])

    def predict(self, batch: list[str]) -> list[str]:
        if "poison" in batch:
            raise RuntimeError("poison")
        return [value.upper() for value in batch]


@pytest.fixture
def app() -> Celery:
    return Celery("unit", broker="memory://", backend="cache+memory://", set_as_current=False)


@pytest.fixture
def fired() -> Iterator[list[tuple[str, Any]]]:
    """(signal, its arguments) for each task signal sent during the test."""
    seen: list[tuple[str, Any]] = []

    def record(name: str, sender: Any = None, **kwargs: Any) -> None:
        seen.append((name, {"sender": sender, **kwargs}))

    names = ("task_prerun", "task_postrun", "task_success", "task_failure")
    receivers = {name: partial(record, name) for name in names}
    for name, receiver in receivers.items():
        getattr(signals, name).connect(receiver)
    yield seen
    for name, receiver in receivers.items():
        getattr(signals, name).disconnect(receiver)


def requests(*values: str) -> list[SimpleRequest]:
    """Fresh ids: the in-memory backend is shared by the whole process."""
    return [SimpleRequest(uuid(), "t", (v,), {}, {}, "host", False, None, None) for v in values]


def states_of(app: Celery, batch: list[SimpleRequest]) -> list[tuple[str, Any]]:
    return [(m["status"], m["result"]) for m in (app.backend.get_task_meta(r.id) for r in batch)]


def test_signals_fire_once_per_run_call_with_the_task_as_sender(app: Celery, fired: list) -> None:
    task = batch_task(app, Poisonable(), name="t.upper")
    batch = requests("a", "b")
    apply_batch(task, batch)
    assert [name for name, _ in fired] == ["task_prerun", "task_success", "task_postrun"]
    prerun, postrun = fired[0][1], fired[2][1]
    assert prerun["sender"] is task and prerun["args"] == (batch,) and prerun["kwargs"] == {}
    assert prerun["task_id"] == postrun["task_id"] and prerun["task_id"] not in {r.id for r in batch}
    assert postrun["state"] == states.SUCCESS and postrun["retval"] == ["A", "B"]
    assert states_of(app, batch) == [(states.SUCCESS, "A"), (states.SUCCESS, "B")]


def test_an_undecodable_request_fails_before_run_and_a_poison_input_alone_by_halving(
        app: Celery, fired: list) -> None:
    task = batch_task(app, Poisonable(), name="t.upper")
    batch = requests("a", "poison", "undecodable", "c", "d")
    outcome = apply_batch(task, batch)
    # [a, poison, c, d] fails, then [a, poison] fails, [a] and [poison] alone, then [c, d].
    assert [name for name, _ in fired].count("task_prerun") == 5
    assert [name for name, _ in fired].count("task_failure") == 3
    by_id = {o.id: o.state for o in outcome.outcomes}
    assert [by_id[r.id] for r in batch] == [states.SUCCESS, states.FAILURE, states.FAILURE, states.SUCCESS,
                                            states.SUCCESS]
    assert [state for state, _ in states_of(app, batch)] == [by_id[r.id] for r in batch]
    assert states_of(app, batch)[0] == (states.SUCCESS, "A")


def test_a_run_requests_task_that_raises_fails_every_request_once(app: Celery, fired: list) -> None:
    seen_tasks: list[str] = []

    @app.task(base=Batches, name="t.legacy")
    def legacy(requests: list[SimpleRequest]) -> None:
        seen_tasks.append(current_task.name)
        raise RuntimeError("fail")

    batch = requests("a", "b", "c")
    apply_batch(legacy, batch)
    assert seen_tasks == ["t.legacy"]  # run once, with the batch task as current_task
    assert [name for name, _ in fired] == ["task_prerun", "task_failure", "task_postrun"]
    assert [state for state, _ in states_of(app, batch)] == [states.FAILURE] * 3
