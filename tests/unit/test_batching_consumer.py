"""BatchConsumer, the batching runtime, driven by hand: a fake pool, timer and consumer.

The seams are the consumer's (pool.apply_async, timer.call_after, the ack and
reject callbacks a message comes with); requests, results and the result
backend (in memory) are Celery's own.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from unittest.mock import Mock

import pytest

from celery import Celery, signals, states
from celery.contrib.testing.mocks import TaskMessage
from kombu.serialization import dumps

from batching import BatchAPI, Batches, batch_task
from batching.consumer import BatchConsumer, acknowledge_if_stored


class Doubler(BatchAPI):
    def decode_request(self, request: Any) -> int:
        value = request.args[0]
        if not isinstance(value, int):
            raise TypeError(f"not a number: {value!r}")
        return value

    def predict(self, batch: list[int]) -> list[int]:
        return [2 * x for x in batch]


@dataclass
class Entry:
    delay: float
    fun: Callable[..., None]
    args: tuple[Any, ...]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeTimer:
    entries: list[Entry] = field(default_factory=list)

    def call_after(self, delay: float, fun: Callable[..., None], args: tuple[Any, ...] = ()) -> Entry:
        entry = Entry(delay, fun, args)
        self.entries.append(entry)
        return entry

    def armed(self) -> list[Entry]:
        return [e for e in self.entries if not e.cancelled]

    def fire(self) -> None:
        (entry,) = self.armed()
        entry.cancelled = True
        entry.fun(*entry.args)


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


class FakeConsumer(SimpleNamespace):
    """The consumer attributes BatchConsumer uses (hashed by identity, as Celery's is)."""

    __hash__ = object.__hash__  # type: ignore[assignment]


@pytest.fixture
def app() -> Celery:
    app = Celery("unit", broker="memory://", backend="cache+memory://", set_as_current=False)
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True)
    return app


@pytest.fixture
def task(app: Celery) -> Batches:
    return batch_task(app, Doubler(), name="t.double", flush_every=3, flush_interval=5.0,
                      decode_concurrency=0)


@pytest.fixture
def consumer() -> FakeConsumer:
    return FakeConsumer(
        pool=FakePool(), timer=FakeTimer(), hostname="unit@host", event_dispatcher=None,
        connection_errors=(), initial_prefetch_count=4, qos=Mock(), hub=None,
        controller=SimpleNamespace(state=SimpleNamespace(revoked=set())))


@pytest.fixture
def runtime(task: Batches, app: Celery, consumer: FakeConsumer) -> BatchConsumer:
    return BatchConsumer.attach(task, app, consumer)


@dataclass
class Sent:
    id: str
    ack: Mock
    reject: Mock


def deliver(runtime: BatchConsumer, value: Any, redelivered: bool = False, **options: Any) -> Sent:
    message = TaskMessage(runtime.task.name, args=(value,), **options)
    message.delivery_info = {"exchange": "", "routing_key": "celery", "redelivered": redelivered}
    sent = Sent(message.headers["id"], Mock(), Mock())
    runtime.on_message(message, None, sent.ack, sent.reject, set())
    return sent


def result_of(app: Celery, sent: Sent) -> tuple[str, Any]:
    meta = app.backend.get_task_meta(sent.id)
    return meta["status"], meta["result"]


def test_a_full_batch_goes_to_the_pool_at_once_and_each_result_is_stored(
        runtime: BatchConsumer, consumer: FakeConsumer, app: Celery) -> None:
    sent = [deliver(runtime, value) for value in (1, 2, 3)]
    assert consumer.pool.sizes() == [3] and len(runtime) == 0 and runtime.inflight == 1
    consumer.pool.run()
    assert [result_of(app, s) for s in sent] == [(states.SUCCESS, 2 * v) for v in (1, 2, 3)]
    assert all(s.ack.call_count == 1 for s in sent) and runtime.inflight == 0


def test_a_partial_batch_waits_for_its_deadline(runtime: BatchConsumer, consumer: FakeConsumer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SimpleNamespace(now=100.0)
    monkeypatch.setattr("batching.consumer.time", SimpleNamespace(monotonic=lambda: clock.now))
    deliver(runtime, 1)
    clock.now += 1.5
    deliver(runtime, 2)
    assert consumer.pool.sizes() == []
    (entry,) = consumer.timer.entries  # armed once, for the oldest request's deadline
    assert entry.delay == pytest.approx(5.0) and not entry.cancelled
    clock.now += 3.5
    consumer.timer.fire()
    assert consumer.pool.sizes() == [2]


def test_only_max_inflight_batches_are_in_the_pool(runtime: BatchConsumer, consumer: FakeConsumer) -> None:
    for value in range(7):
        deliver(runtime, value)
    assert consumer.pool.sizes() == [3] and len(runtime) == 4  # the next batch forms meanwhile
    consumer.pool.run(0)
    assert consumer.pool.sizes() == [3, 3] and len(runtime) == 1


@pytest.mark.parametrize("payload", [42, {"args": 1}, [1, 2], ["not-a-list", {}, {}], [[], "kwargs", {}]],
                         ids=["scalar", "dict", "short-list", "args-not-a-list", "kwargs-not-a-dict"])
def test_a_malformed_message_fails_alone(runtime: BatchConsumer, consumer: FakeConsumer, app: Celery,
                                         payload: Any) -> None:
    bad = TaskMessage(runtime.task.name)
    bad.payload = payload
    bad.content_type, bad.content_encoding, bad.body = dumps(payload, serializer="json")
    reject = Mock()
    runtime.on_message(bad, None, Mock(), reject, set())
    ((_, _, requeue),) = [call.args for call in reject.call_args_list]
    assert requeue is False
    assert app.backend.get_task_meta(bad.headers["id"])["status"] == states.FAILURE
    good = [deliver(runtime, value) for value in (1, 2, 3)]
    consumer.pool.run()
    assert [result_of(app, s) for s in good] == [(states.SUCCESS, 2 * v) for v in (1, 2, 3)]


def test_a_request_that_cannot_be_decoded_fails_alone(runtime: BatchConsumer, consumer: FakeConsumer,
                                                      app: Celery) -> None:
    sent = [deliver(runtime, value) for value in (1, "x", 3)]
    consumer.pool.run()
    assert [result_of(app, s)[0] for s in sent] == [states.SUCCESS, states.FAILURE, states.SUCCESS]
    assert result_of(app, sent[2]) == (states.SUCCESS, 6)


def test_a_bad_eta_fails_that_request_alone(runtime: BatchConsumer, app: Celery) -> None:
    sent = deliver(runtime, 1, eta="not a date")
    assert result_of(app, sent)[0] == states.FAILURE
    assert sent.reject.call_args.args[2] is False


def test_a_reconnect_keeps_the_runtime_and_its_inflight_count(
        runtime: BatchConsumer, task: Batches, app: Celery, consumer: FakeConsumer) -> None:
    for value in range(5):
        deliver(runtime, value)  # one batch in the pool, two buffered
    assert BatchConsumer.attach(task, app, consumer) is runtime  # Strategy again, same consumer
    assert len(runtime) == 0 and runtime.inflight == 1 and consumer.timer.armed() == []
    for value in range(3):
        deliver(runtime, value)
    assert consumer.pool.sizes() == [3]  # the slot is still taken by the old batch
    consumer.pool.run(0)
    assert consumer.pool.sizes() == [3, 3] and runtime.inflight == 1


def test_a_pool_that_refuses_the_batch_gets_the_messages_requeued(
        runtime: BatchConsumer, consumer: FakeConsumer) -> None:
    consumer.pool.refuse = True
    sent = [deliver(runtime, value) for value in (1, 2, 3)]
    assert [s.reject.call_args.args[2] for s in sent] == [True, True, True]
    assert runtime.inflight == 0


def test_a_batch_lost_in_the_pool_is_requeued_and_frees_its_slot(
        runtime: BatchConsumer, consumer: FakeConsumer) -> None:
    sent = [deliver(runtime, value) for value in (1, 2, 3)]
    consumer.pool.run(0, result=RuntimeError("child died"))
    assert [s.reject.call_args.args[2] for s in sent] == [True, True, True]
    assert runtime.inflight == 0


def test_prefetch_is_raised_to_two_batches_per_slot(runtime: BatchConsumer, consumer: FakeConsumer) -> None:
    assert consumer.initial_prefetch_count == 2 * 3 * 1


def test_a_task_told_not_to_keeps_the_workers_prefetch(app: Celery, consumer: FakeConsumer) -> None:
    task = batch_task(app, Doubler(), name="t.keep", flush_every=3, decode_concurrency=0,
                      raise_prefetch=False)
    BatchConsumer.attach(task, app, consumer)
    assert consumer.initial_prefetch_count == 4  # the worker's own window


def test_bad_options_fail_at_registration(app: Celery) -> None:
    with pytest.raises(ValueError, match="flush_every must be a positive integer"):
        batch_task(app, Doubler(), name="t.bad", flush_every=0)
    with pytest.raises(ValueError, match="batch_policy must be one of timeout, adaptive"):
        batch_task(app, Doubler(), name="t.bad2", batch_policy="greedy")


@pytest.fixture
def revoked_signals() -> Iterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    def receiver(sender: Any = None, **kwargs: Any) -> None:
        seen.append({"sender": sender, **kwargs})

    signals.task_revoked.connect(receiver)
    yield seen
    signals.task_revoked.disconnect(receiver)


def test_a_request_that_expires_before_its_forward_pass_is_never_computed(
        runtime: BatchConsumer, consumer: FakeConsumer, app: Celery, monkeypatch: pytest.MonkeyPatch,
        revoked_signals: list[dict[str, Any]]) -> None:
    expires = datetime.now(UTC) + timedelta(seconds=30)
    sent = [deliver(runtime, 1), deliver(runtime, 2, expires=expires.isoformat()), deliver(runtime, 3)]
    assert consumer.pool.sizes() == [3]  # live when dispatched; it expires waiting in the pool
    later = expires.timestamp() + 1
    monkeypatch.setattr("batching.request.time", SimpleNamespace(time=lambda: later))
    consumer.pool.run()
    assert [result_of(app, s)[0] for s in sent] == [states.SUCCESS, states.REVOKED, states.SUCCESS]
    assert all(s.ack.call_count == 1 for s in sent) and runtime.inflight == 0
    assert [(r["sender"], r["expired"]) for r in revoked_signals] == [(runtime.task, True)]


def test_a_request_already_expired_in_the_buffer_is_dropped_at_dispatch(
        runtime: BatchConsumer, consumer: FakeConsumer, app: Celery, revoked_signals: list) -> None:
    for value in range(3):
        deliver(runtime, value)  # the one slot is taken
    soon = datetime.now(UTC) + timedelta(milliseconds=50)
    doomed = deliver(runtime, 9, expires=soon.isoformat())
    deliver(runtime, 10)
    deliver(runtime, 11)
    while datetime.now(UTC) <= soon:
        time.sleep(0.01)  # the behaviour under test is the clock itself
    consumer.pool.run(0)  # the slot frees: the next batch goes without the expired request
    assert consumer.pool.sizes() == [3, 2]
    assert result_of(app, doomed)[0] == states.REVOKED and doomed.ack.call_count == 1
    assert [r["expired"] for r in revoked_signals] == [True]


def test_a_redelivered_request_stored_then_expired_keeps_its_result(
        runtime: BatchConsumer, consumer: FakeConsumer, app: Celery) -> None:
    # Its worker stored the result, then died before acknowledging; Redis hands the
    # message back after the visibility timeout, past the request's deadline.
    app.backend.mark_as_done("stored", "stored before the worker died")
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    first = deliver(runtime, 1, redelivered=True, expires=past, id="stored")
    assert first.ack.call_count == 1 and len(runtime) == 0  # acknowledged at intake, not buffered
    assert result_of(app, first) == (states.SUCCESS, "stored before the worker died")


def test_a_redelivered_request_whose_result_is_stored_is_not_run_again(
        runtime: BatchConsumer, consumer: FakeConsumer, app: Celery) -> None:
    first = deliver(runtime, 1, redelivered=True)
    app.backend.mark_as_done(first.id, "stored before the worker died")
    sent = [first, deliver(runtime, 2), deliver(runtime, 3)]
    consumer.pool.run()
    assert [result_of(app, s) for s in sent] == [
        (states.SUCCESS, "stored before the worker died"), (states.SUCCESS, 4), (states.SUCCESS, 6)]
    assert all(s.ack.call_count == 1 for s in sent) and runtime.inflight == 0


@pytest.mark.parametrize(("redelivered", "stored", "acknowledged"),
                         [(True, True, True), (True, False, False), (False, True, False)])
def test_only_a_redelivered_message_with_a_stored_result_is_acknowledged_at_intake(
        app: Celery, consumer: FakeConsumer, task: Batches, redelivered: bool, stored: bool,
        acknowledged: bool) -> None:
    task_id = str(uuid.uuid4())  # the memory backend outlives the app
    message = TaskMessage(task.name, id=task_id, args=(1,))
    message.delivery_info = {"redelivered": redelivered}
    if stored:
        app.backend.mark_as_done(task_id, "stored before the worker died")
    ack = Mock()
    assert acknowledge_if_stored(task, consumer, message, ack) is acknowledged
    assert ack.call_count == int(acknowledged)
