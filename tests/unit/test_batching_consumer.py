"""BatchConsumer driven by hand with a fake pool and consumer; requests, timer and backend are real."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from unittest.mock import Mock

import pytest

from celery import Celery, signals, states
from celery.contrib.testing.mocks import TaskMessage
from kombu.asynchronous.timer import Timer
from kombu.serialization import dumps
from kombu.utils.uuid import uuid

from batching import BatchAPI, batch_task
from batching.consumer import BatchConsumer


class Doubler(BatchAPI):
    def predict(self, batch: list[int]) -> list[int]:
        return [2 * x for x in batch]


@dataclass
class FakePool:
    """Holds what is applied until the test runs it; ``refuse`` makes apply_async raise."""

    applied: list[tuple[Callable[..., Any], tuple[Any, ...], Callable[[Any], None]]] = field(
        default_factory=list)
    refuse: bool = False

    def apply_async(self, target: Callable[..., Any], args: tuple[Any, ...],
                    callback: Callable[[Any], None], error_callback: Callable[[Any], None]) -> None:
        if self.refuse:
            raise RuntimeError("pool closed")
        self.applied.append((target, args, callback))

    def sizes(self) -> list[int]:
        return [len(args[1]) for _, args, _ in self.applied]

    def run(self, index: int = 0, result: Any = None) -> None:
        """Run batch ``index`` (or report ``result`` instead, as a lost batch)."""
        target, args, callback = self.applied[index]
        callback(target(*args) if result is None else result)


class Runtime:
    """A batching task's message handler (its Strategy) in a consumer, and the runtime behind it."""

    def __init__(self, **options: Any) -> None:
        self.app = Celery("unit", broker="memory://", backend="cache+memory://", set_as_current=False)
        self.app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True)
        self.task = batch_task(self.app, Doubler(), name="t.double", **{
            "flush_every": 3, "flush_interval": 5.0, "decode_concurrency": 0, **options})
        self.pool, self.timer = FakePool(), Timer()
        self.consumer = Mock(pool=self.pool, timer=self.timer, hostname="unit@host", event_dispatcher=None,
                             connection_errors=(), initial_prefetch_count=4, hub=None,
                             **{"controller.state.revoked": set()})
        self.handler = self.task.Strategy(self.task, self.app, self.consumer)
        self.runtime = BatchConsumer.attach(self.task, self.app, self.consumer)

    def deliver(self, value: Any, redelivered: bool = False, payload: Any = None, **options: Any) -> Mock:
        """A message with ``args=(value,)`` (or a raw ``payload``); its ack and reject mocks."""
        message = TaskMessage("t.double", args=(value,), **{"id": uuid(), **options})
        if payload is not None:
            message.payload = payload
            message.content_type, message.content_encoding, message.body = dumps(payload, serializer="json")
        message.delivery_info = {"exchange": "", "routing_key": "celery", "redelivered": redelivered}
        sent = Mock(id=message.headers["id"])
        self.handler(message, None, sent.ack, sent.reject, set())
        return sent

    def result(self, sent: Mock) -> tuple[str, Any]:
        meta = self.app.backend.get_task_meta(sent.id)
        return meta["status"], meta["result"]


@pytest.fixture
def rt() -> Runtime:
    return Runtime()


def test_a_full_batch_goes_at_once_and_only_max_inflight_batches_are_in_the_pool(rt: Runtime) -> None:
    sent = [rt.deliver(value) for value in range(7)]
    assert rt.pool.sizes() == [3] and len(rt.runtime) == 4  # the next batch forms meanwhile
    assert rt.runtime.inflight == 1
    rt.pool.run(0)
    assert [rt.result(s) for s in sent[:3]] == [(states.SUCCESS, 2 * v) for v in range(3)]
    assert [s.ack.call_count for s in sent] == [1, 1, 1, 0, 0, 0, 0]
    assert rt.pool.sizes() == [3, 3] and len(rt.runtime) == 1 and rt.runtime.inflight == 1


def test_a_partial_batch_waits_for_its_oldest_requests_deadline(
        rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr("batching.consumer.time", SimpleNamespace(monotonic=lambda: clock.now))
    rt.deliver(1)
    clock.now += 1.5
    rt.deliver(2)
    assert rt.pool.sizes() == []
    (event,) = rt.timer.queue  # armed once, for the oldest request's deadline
    assert event.eta - time.monotonic() == pytest.approx(5.0, abs=0.5) and not event.entry.canceled
    clock.now += 3.5
    event.entry()
    assert rt.pool.sizes() == [2]


@pytest.mark.parametrize("options", [
    {"payload": 42}, {"payload": {"args": 1}}, {"payload": [1, 2]}, {"payload": ["not-a-list", {}, {}]},
    {"payload": [[], "kwargs", {}]}, {"eta": "not a date"}])
def test_a_malformed_message_fails_alone(rt: Runtime, options: dict[str, Any]) -> None:
    bad = rt.deliver(1, **options)
    assert bad.reject.call_args.args[2] is False and rt.result(bad)[0] == states.FAILURE
    good = [rt.deliver(value) for value in (1, 2, 3)]
    rt.pool.run()
    assert [rt.result(s) for s in good] == [(states.SUCCESS, 2 * v) for v in (1, 2, 3)]


def test_a_reconnect_keeps_the_runtime_and_its_inflight_count(rt: Runtime) -> None:
    for value in range(5):
        rt.deliver(value)  # one batch in the pool, two buffered
    assert BatchConsumer.attach(rt.task, rt.app, rt.consumer) is rt.runtime  # Strategy again
    assert len(rt.runtime) == 0 and rt.runtime.inflight == 1
    assert [event for event in rt.timer.queue if not event.entry.canceled] == []
    for value in range(3):
        rt.deliver(value)
    assert rt.pool.sizes() == [3]  # the slot is still taken by the old batch
    rt.pool.run(0)
    assert rt.pool.sizes() == [3, 3] and rt.runtime.inflight == 1


@pytest.mark.parametrize("how", ["refused", "lost"])
def test_a_batch_the_pool_refuses_or_loses_is_requeued_and_frees_its_slot(rt: Runtime, how: str) -> None:
    rt.pool.refuse = how == "refused"
    sent = [rt.deliver(value) for value in (1, 2, 3)]
    if how == "lost":
        rt.pool.run(0, result=RuntimeError("child died"))
    assert [s.reject.call_args.args[2] for s in sent] == [True, True, True]
    assert rt.runtime.inflight == 0


@pytest.mark.parametrize(("raise_prefetch", "window"), [(True, 2 * 3 * 1), (False, 4)])
def test_prefetch_is_raised_to_two_batches_per_slot_if_asked(raise_prefetch: bool, window: int) -> None:
    assert Runtime(raise_prefetch=raise_prefetch).consumer.initial_prefetch_count == window


@pytest.fixture
def revoked() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any = None, **kwargs: Any) -> None:
        seen.append({"sender": sender, **kwargs})

    signals.task_revoked.connect(receiver)
    yield seen
    signals.task_revoked.disconnect(receiver)


def test_a_request_that_expires_before_its_forward_pass_is_never_computed(
        rt: Runtime, monkeypatch: pytest.MonkeyPatch, revoked: list[dict[str, Any]]) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=30)
    sent = [rt.deliver(1), rt.deliver(2, expires=expires.isoformat()), rt.deliver(3)]
    assert rt.pool.sizes() == [3]  # live when dispatched; it expires waiting in the pool
    later = SimpleNamespace(time=lambda: expires.timestamp() + 1, perf_counter=time.perf_counter)
    monkeypatch.setattr("batching.api.time", later)
    rt.pool.run()
    assert [rt.result(s)[0] for s in sent] == [states.SUCCESS, states.REVOKED, states.SUCCESS]
    assert all(s.ack.call_count == 1 for s in sent) and rt.runtime.inflight == 0
    assert [(r["sender"], r["expired"]) for r in revoked] == [(rt.runtime.task, True)]


def test_a_request_already_expired_in_the_buffer_is_dropped_at_dispatch(
        rt: Runtime, revoked: list[dict[str, Any]]) -> None:
    for value in range(3):
        rt.deliver(value)  # the one slot is taken
    soon = datetime.now(UTC) + timedelta(milliseconds=50)
    doomed = rt.deliver(9, expires=soon.isoformat())
    rt.deliver(10)
    rt.deliver(11)
    while datetime.now(UTC) <= soon:
        time.sleep(0.01)  # the behaviour under test is the clock itself
    rt.pool.run(0)  # the slot frees: the next batch goes without the expired request
    assert rt.pool.sizes() == [3, 2]
    assert rt.result(doomed)[0] == states.REVOKED and doomed.ack.call_count == 1
    assert [r["expired"] for r in revoked] == [True]


@pytest.mark.parametrize(("redelivered", "stored", "expired", "acknowledged"), [
    (True, True, False, True), (True, True, True, True), (True, False, False, False),
    (False, True, False, False)])
def test_only_a_redelivered_message_whose_result_is_stored_is_acknowledged_at_intake(
        rt: Runtime, redelivered: bool, stored: bool, expired: bool, acknowledged: bool) -> None:
    # A worker stored the result, then died before acknowledging; Redis hands the message
    # back after the visibility timeout, maybe past its deadline: the stored result stands.
    task_id = uuid()
    if stored:
        rt.app.backend.mark_as_done(task_id, "stored before the worker died")
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    sent = rt.deliver(1, redelivered=redelivered, id=task_id, **({"expires": past} if expired else {}))
    assert (sent.ack.call_count, len(rt.runtime)) == ((1, 0) if acknowledged else (0, 1))
    assert rt.result(sent)[0] == (states.SUCCESS if stored else states.PENDING)


def test_a_redelivered_request_whose_result_is_stored_meanwhile_is_not_run_again(rt: Runtime) -> None:
    first = rt.deliver(1, redelivered=True)
    rt.app.backend.mark_as_done(first.id, "stored before the worker died")
    sent = [first, rt.deliver(2), rt.deliver(3)]
    rt.pool.run()
    assert [rt.result(s) for s in sent] == [
        (states.SUCCESS, "stored before the worker died"), (states.SUCCESS, 4), (states.SUCCESS, 6)]
    assert all(s.ack.call_count == 1 for s in sent) and rt.runtime.inflight == 0
