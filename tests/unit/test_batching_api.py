"""BatchAPI's hooks in LitServe's order, setup once; batch_task and single_task registering them."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from celery import Celery, states
from celery.exceptions import Ignore
from kombu.utils.uuid import uuid

from batching import BatchAPI, SimpleRequest, batch_predicted, batch_task, single_task


def request(*args: Any) -> SimpleRequest:
    return SimpleRequest(uuid(), "t.task", args, {}, {}, "host", False, None, None)


class Recorder(BatchAPI):
    """Records each hook call; predict squares."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def setup(self) -> None:
        self.calls.append("setup")

    def decode_request(self, request: SimpleRequest) -> int:
        self.calls.append("decode_request")
        return int(request.args[0])

    def batch(self, inputs: list[int]) -> tuple[int, ...]:
        self.calls.append("batch")
        return tuple(inputs)

    def predict(self, batch: tuple[int, ...]) -> list[int]:
        self.calls.append("predict")
        return [x * x for x in batch]

    def encode_response(self, output: int, request: SimpleRequest) -> dict[str, Any]:
        self.calls.append("encode_response")
        assert request.batch is not None
        return {"value": output, "batch_size": request.batch.size, "batch_id": request.batch.id}


def test_hooks_run_in_order_with_setup_once_and_each_forward_pass_is_signalled() -> None:
    sizes: list[int] = []

    def receiver(sender: Any = None, size: int = 0, **_: Any) -> None:
        sizes.append(size)

    api = Recorder()
    batch_predicted.connect(receiver)
    try:
        results = api.handle([api.decode(request(n)) for n in (2, 3)])
    finally:
        batch_predicted.disconnect(receiver)
    assert api.calls == ["setup", "decode_request", "decode_request", "batch", "predict",
                         "encode_response", "encode_response"]
    assert [r["value"] for r in results] == [4, 9] and {r["batch_size"] for r in results} == {2}
    assert results[0]["batch_id"] == results[1]["batch_id"] and sizes == [2]


def test_setup_runs_once_across_threads() -> None:
    api = Recorder()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: api.ensure_setup(), range(8)))
    assert api.calls == ["setup"]


def test_an_output_count_mismatch_fails_the_batch() -> None:
    class Short(Recorder):
        def unbatch(self, output: Any) -> list[int]:
            return list(output)[:-1]

    api = Short()
    with pytest.raises(RuntimeError, match="1 outputs for 2 requests"):
        api.handle([api.decode(request(1)), api.decode(request(2))])


def test_the_same_api_serves_a_batch_task_and_a_single_task_eagerly() -> None:
    app = Celery("unit", set_as_current=False)
    app.conf.task_always_eager = True
    api = Recorder()
    batched = batch_task(app, api, name="t.batched", flush_every=4)
    alone = single_task(app, api, name="t.alone")
    assert [(r["value"], r["batch_size"]) for r in (batched.apply((4,)).get(), alone.apply((3,)).get())] == [
        (16, 1), (9, 1)]  # each a batch of one
    assert api.calls.count("setup") == 1
    with pytest.raises(TypeError, match="batching.BatchAPI"):
        batch_task(app, object(), name="t.bad")  # type: ignore[arg-type]


@pytest.mark.parametrize(("stored", "expired"), [(False, True), (True, False), (True, True)],
                         ids=["expired", "stored", "stored-then-expired"])
def test_a_single_task_that_expired_or_whose_result_is_stored_is_not_run(stored: bool, expired: bool) -> None:
    # Expired: it waited past its deadline in the pool's queue; stored REVOKED. Stored: redelivered
    # (Redis does so after the visibility timeout, maybe past the deadline); its result stands.
    app = Celery("unit", broker="memory://", backend="cache+memory://", set_as_current=False)
    api = Recorder()
    alone = single_task(app, api, name="t.alone")
    task_id, past = uuid(), (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    if stored:
        app.backend.mark_as_done(task_id, {"value": 9})
    alone.push_request(id=task_id, args=(3,), kwargs={}, delivery_info={"redelivered": stored},
                       **({"expires": past} if expired else {}))
    try:
        with pytest.raises(Ignore):  # Celery acknowledges an ignored task and stores nothing more
            alone.run(3)
    finally:
        alone.pop_request()
    meta = app.backend.get_task_meta(task_id)
    assert (meta["status"], str(meta["result"])) == ((states.SUCCESS, "{'value': 9}") if stored else
                                                     (states.REVOKED, "expired")) and api.calls == []


@pytest.mark.parametrize(("option", "value"), [
    ("flush_every", 0), ("flush_interval", 0), ("max_inflight", True), ("decode_concurrency", -1),
    ("batch_policy", "greedy"), ("raise_prefetch", 1)])
def test_bad_options_fail_at_registration(option: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"t.bad: {option} must be"):
        batch_task(Celery("unit", set_as_current=False), Recorder(), name="t.bad", **{option: value})
