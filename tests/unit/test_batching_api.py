"""BatchAPI: the hooks run in LitServe's order, setup once, one result per request."""
from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from celery import Celery, states
from celery.exceptions import Ignore

from batching import BatchAPI, SimpleRequest, batch_predicted, batch_task, single_task


def request(*args: Any, name: str = "t.task") -> SimpleRequest:
    return SimpleRequest("id-" + "-".join(map(str, args)), name, args, {}, {}, "host", False, None, None)


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


def test_hooks_run_in_order_with_setup_once() -> None:
    api = Recorder()
    requests = [api.decode(request(n)) for n in (2, 3)]
    results = api.handle(requests)
    assert api.calls == ["setup", "decode_request", "decode_request", "batch", "predict",
                         "encode_response", "encode_response"]
    assert [r["value"] for r in results] == [4, 9] and {r["batch_size"] for r in results} == {2}
    assert results[0]["batch_id"] == results[1]["batch_id"]


def test_one_request_is_a_batch_of_one() -> None:
    api = Recorder()
    assert api(request(5))["value"] == 25 and api(request(6))["batch_size"] == 1
    assert api.calls.count("setup") == 1


def test_setup_runs_once_across_threads() -> None:
    api = Recorder()
    threads = [threading.Thread(target=api.ensure_setup) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert api.calls == ["setup"]


def test_an_output_count_mismatch_fails_the_batch() -> None:
    class Short(Recorder):
        def unbatch(self, output: Any) -> list[int]:
            return list(output)[:-1]

    api = Short()
    with pytest.raises(RuntimeError, match="1 outputs for 2 requests"):
        api.handle([api.decode(request(1)), api.decode(request(2))])


def test_each_forward_pass_is_signalled_with_its_size() -> None:
    seen: list[int] = []

    def receiver(sender: Any = None, size: int = 0, **_: Any) -> None:
        seen.append(size)

    batch_predicted.connect(receiver)
    try:
        api = Recorder()
        api.handle([api.decode(request(n)) for n in (1, 2, 3)])
    finally:
        batch_predicted.disconnect(receiver)
    assert seen == [3]


def test_the_same_api_serves_a_batch_task_and_a_single_task_eagerly() -> None:
    app = Celery("unit", set_as_current=False)
    app.conf.task_always_eager = True
    api = Recorder()
    batched = batch_task(app, api, name="t.batched", flush_every=4)
    alone = single_task(app, api, name="t.alone")
    result = batched.apply((4,)).get()
    assert (result["value"], result["batch_size"]) == (16, 1)
    assert alone.apply((3,)).get()["value"] == 9
    with pytest.raises(TypeError, match="batching.BatchAPI"):
        batch_task(app, object(), name="t.bad")  # type: ignore[arg-type]


def test_a_single_task_that_expired_in_the_pool_queue_is_stored_revoked_not_run() -> None:
    app = Celery("unit", broker="memory://", backend="cache+memory://", set_as_current=False)
    api = Recorder()
    alone = single_task(app, api, name="t.alone")
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    alone.push_request(id="late", args=(3,), kwargs={}, expires=past)
    try:
        with pytest.raises(Ignore):  # Celery acknowledges an ignored task and stores nothing more
            alone.run(3)
    finally:
        alone.pop_request()
    assert app.backend.get_task_meta("late")["status"] == states.REVOKED
    assert api.calls == []


def test_a_redelivered_single_task_whose_result_is_stored_is_not_run_again() -> None:
    app = Celery("unit", broker="memory://", backend="cache+memory://", set_as_current=False)
    api = Recorder()
    alone = single_task(app, api, name="t.alone")
    app.backend.mark_as_done("again", {"value": 9})
    alone.push_request(id="again", args=(3,), kwargs={}, delivery_info={"redelivered": True})
    try:
        with pytest.raises(Ignore):
            alone.run(3)
    finally:
        alone.pop_request()
    assert app.backend.get_task_meta("again")["result"] == {"value": 9} and api.calls == []


def test_a_redelivered_single_task_stored_then_expired_keeps_its_result() -> None:
    # Redis hands back a sync request's message after the visibility timeout (60 s),
    # past its 30 s deadline: the answer stored before its worker died stands.
    app = Celery("unit", broker="memory://", backend="cache+memory://", set_as_current=False)
    api = Recorder()
    alone = single_task(app, api, name="t.alone")
    app.backend.mark_as_done("late", {"value": 9})
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    alone.push_request(id="late", args=(3,), kwargs={}, expires=past, delivery_info={"redelivered": True})
    try:
        with pytest.raises(Ignore):
            alone.run(3)
    finally:
        alone.pop_request()
    meta = app.backend.get_task_meta("late")
    assert (meta["status"], meta["result"]) == (states.SUCCESS, {"value": 9}) and api.calls == []
