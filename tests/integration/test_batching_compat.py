"""A celery-batches user's tasks on ``batching`` in a real worker against real Redis: the tasks,
calls and expectations of celery-batches' own tests (``t/integration/test_signals.py``)."""
from __future__ import annotations

import ast
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import cast

import pytest
import redis

from celery import Celery

from tests.support.worker import WorkerProcess, client_app, start_batch_app

ADD = "tests.integration.batch_app.add"
CUMADD = "tests.integration.batch_app.cumadd"
FAILING = "tests.integration.batch_app.failing"


@pytest.fixture(scope="module")
def app(module_redis: redis.Redis, redis_url: str) -> Celery:
    return client_app(redis_url)


@pytest.fixture(scope="module")
def worker(app: Celery, redis_url: str) -> Iterator[WorkerProcess]:
    with start_batch_app(app, redis_url) as running:
        yield running


@pytest.fixture
def signal_log(module_redis: redis.Redis, worker: WorkerProcess) -> Callable[[int], Counter[str]]:
    """The signals fired since the test began, as counts of ``"signal task"``, once ``count`` came
    (bounded: ``task_postrun`` fires after ``run`` stored its results)."""
    module_redis.delete("signals")

    def read(count: int) -> Counter[str]:
        deadline = time.monotonic() + 10
        while module_redis.llen("signals") < count and time.monotonic() < deadline:
            time.sleep(0.01)  # polling Redis: there is nothing to block on
        return Counter(cast(bytes, raw).decode() for raw in module_redis.lrange("signals", 0, -1))
    return read


@pytest.mark.parametrize(("task", "answers", "final"), [
    (ADD, ["4", "4"], "task_success"), (CUMADD, ["1", "4"], "task_success"),
    (FAILING, ["RuntimeError('fail')"] * 2, "task_failure")])
def test_every_caller_gets_its_answer_and_the_batch_is_traced_once(
        app: Celery, signal_log: Callable[[int], Counter[str]], task: str, answers: list[str],
        final: str) -> None:
    # run stores the results (add: the sum, cumadd: the sum so far); failing's callers get its error.
    results = [app.send_task(task, (1,)), app.send_task(task, (3,))]
    assert [repr(r.get(timeout=20, propagate=False)) for r in results] == answers
    # celery-batches: each request is received; the batch runs (and is traced) once.
    assert signal_log(5) == Counter({f"task_received {task}": 2, f"task_prerun {task}": 1,
                                     f"{final} {task}": 1, f"task_postrun {task}": 1})


@pytest.mark.parametrize(("task", "unacked"), [("t.early_ack", 0), ("t.late_ack", 2)])
def test_run_sees_the_batch_task_as_current_and_acks_as_acks_late_says(
        app: Celery, module_redis: redis.Redis, worker: WorkerProcess, task: str, unacked: int) -> None:
    # acks_late=False acknowledges before run finishes; acks_late=True keeps the messages
    # unacknowledged while it runs.
    module_redis.delete("observed")
    results = [app.send_task(task, (i,)) for i in range(2)]
    assert [r.get(timeout=20) for r in results] == ["seen", "seen"]
    (raw,) = module_redis.lrange("observed", 0, -1)
    assert ast.literal_eval(cast(bytes, raw).decode()) == {"current_task": task, "app_current_task": task,
                                              "unacked": unacked, "requests": 2}
