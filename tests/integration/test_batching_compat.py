"""A celery-batches user's tasks on ``batching``, in a real worker against real Redis.

Written from celery-batches' documentation and its own integration tests
(``t/integration/test_signals.py``, ``tasks.py``): the same tasks, the same
calls, the same expectations.
"""
from __future__ import annotations

import ast
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import redis

from celery import Celery

from tests.integration.test_batching import start_worker
from tests.support.worker import WorkerProcess, client_app

ADD = "tests.integration.batch_app.add"
CUMADD = "tests.integration.batch_app.cumadd"
FAILING = "tests.integration.batch_app.failing"


@pytest.fixture(scope="module")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def app(redis_client: redis.Redis, redis_url: str) -> Celery:
    return client_app(redis_url)


@pytest.fixture(scope="module")
def worker(app: Celery, redis_url: str) -> Iterator[WorkerProcess]:
    with start_worker(app, redis_url) as running:
        yield running


@pytest.fixture
def signal_log(redis_client: redis.Redis, worker: WorkerProcess) -> Callable[[int], Counter[str]]:
    """Reads the signals the worker fired since the test began, as counts of ``"signal task"``.

    ``task_postrun`` fires after ``run`` stored its results, so the reader waits (bounded)
    for at least ``count`` records; extra ones would still show in the counts.
    """
    redis_client.delete("signals")

    def read(count: int) -> Counter[str]:
        deadline = time.monotonic() + 10
        while redis_client.llen("signals") < count and time.monotonic() < deadline:
            time.sleep(0.01)  # polling Redis: there is nothing to block on
        return Counter(map(str, redis_client.lrange("signals", 0, -1)))
    return read


def test_add_example_returns_the_sum_to_each_caller_and_fires_task_signals_once(
        app: Celery, signal_log: Callable[[int], Counter[str]]) -> None:
    results = [app.send_task(ADD, (1,)), app.send_task(ADD, (3,))]
    assert [r.get(timeout=20) for r in results] == [4, 4]
    # celery-batches: each request is received; the batch runs (and is traced) once.
    assert signal_log(5) == Counter({
        f"task_received {ADD}": 2, f"task_prerun {ADD}": 1, f"task_success {ADD}": 1,
        f"task_postrun {ADD}": 1})


def test_failing_batch_fires_failure_once_and_every_caller_gets_the_error(
        app: Celery, signal_log: Callable[[int], Counter[str]]) -> None:
    results = [app.send_task(FAILING), app.send_task(FAILING)]
    for result in results:
        with pytest.raises(RuntimeError, match="fail"):
            result.get(timeout=20)
    assert signal_log(5) == Counter({
        f"task_received {FAILING}": 2, f"task_prerun {FAILING}": 1, f"task_failure {FAILING}": 1,
        f"task_postrun {FAILING}": 1})


def test_run_that_stores_its_own_results_keeps_working(app: Celery, worker: WorkerProcess) -> None:
    results = [app.send_task(CUMADD, (value,)) for value in (1, 2, 3, 4)]
    assert [r.get(timeout=20) for r in results] == [1, 3, 3, 7]  # cumulative within each pair


def _observed(redis_client: redis.Redis, task: str, app: Celery) -> dict[str, object]:
    redis_client.delete("observed")
    results = [app.send_task(task, (i,)) for i in range(2)]
    assert [r.get(timeout=20) for r in results] == ["seen", "seen"]
    (raw,) = redis_client.lrange("observed", 0, -1)
    observed: dict[str, object] = ast.literal_eval(str(raw))
    return observed


def test_current_task_inside_run_is_the_batch_task(app: Celery, redis_client: redis.Redis,
                                                   worker: WorkerProcess) -> None:
    observed = _observed(redis_client, "t.late_ack", app)
    assert observed["current_task"] == observed["app_current_task"] == "t.late_ack"


def test_acks_late_false_acknowledges_before_run_finishes(app: Celery, redis_client: redis.Redis,
                                                          worker: WorkerProcess) -> None:
    observed = _observed(redis_client, "t.early_ack", app)
    assert observed == {"current_task": "t.early_ack", "app_current_task": "t.early_ack",
                        "unacked": 0, "requests": 2}


def test_acks_late_true_keeps_messages_unacknowledged_while_run_runs(app: Celery, redis_client: redis.Redis,
                                                       worker: WorkerProcess) -> None:
    observed = _observed(redis_client, "t.late_ack", app)
    assert observed["requests"] == 2 and observed["unacked"] == 2
