"""ResultWaiter against a real Redis: results stored as a worker stores them (``mark_as_done``: SET +
PUBLISH), waited for in the web app's own Celery handle."""
from __future__ import annotations

import multiprocessing
import os
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask

from celery import Celery

from webapp.dispatch import celery_init_app
from webapp.errors import ApiError
from webapp.results import ResultWaiter

THREADS = 64
#: A poll interval no test outlives: only pub/sub (or a resubscribe nudge) can deliver.
NEVER = 3600.0


@pytest.fixture
def worker_backend(clean_redis: redis.Redis, redis_url: str) -> Iterator[Any]:
    """The backend a worker stores results with (plain Celery, celeryconfig)."""
    app = Celery("results-test-worker", set_as_current=False)
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=redis_url, result_backend=redis_url)
    yield app.backend
    app.close()


@pytest.fixture
def web_celery(clean_redis: redis.Redis, redis_url: str) -> Iterator[Celery]:
    flask_app = Flask("results-test-web")
    flask_app.config["CELERY"] = {"broker_url": redis_url, "result_backend": redis_url,
                                  "redis_client_name": "webapp-results-test"}
    celery = celery_init_app(flask_app)
    yield celery
    celery.close()


class FetchTracking(ResultWaiter):
    """Records each GET's state (None: nothing stored): a result whose GETs all found none came by pub/sub."""

    def __init__(self, backend: Any, poll_interval: float, found_nothing: Any = None) -> None:
        super().__init__(backend, poll_interval=poll_interval)
        self.fetched: dict[str, list[str | None]] = {}
        self.fetched_changed = threading.Condition()
        self.found_nothing = found_nothing or threading.Event()

    def fetch(self, task_id: str) -> dict[str, Any] | None:
        meta = super().fetch(task_id)
        if meta is None:
            self.found_nothing.set()
        with self.fetched_changed:
            self.fetched.setdefault(task_id, []).append(None if meta is None else meta["status"])
            self.fetched_changed.notify_all()
        return meta

    def wait_fetched(self, task_ids: set[str], timeout: float = 20) -> None:
        with self.fetched_changed:
            assert self.fetched_changed.wait_for(lambda: task_ids <= set(self.fetched), timeout), \
                f"no GET for {sorted(task_ids - set(self.fetched))}"


@pytest.fixture
def tracking(web_celery: Celery) -> Iterator[FetchTracking]:
    """A waiter that never polls: after the first GET only the listener can deliver."""
    waiter = FetchTracking(web_celery.backend, poll_interval=NEVER)
    yield waiter
    waiter.close()


def run_waiters(waiter: ResultWaiter, task_ids: list[str], before_wait: threading.Barrier | None,
                timeout: float = 20.0) -> tuple[dict[str, Any], list[threading.Thread]]:
    """One thread per id: register, (barrier), wait; each one's meta or exception."""
    outcomes: dict[str, Any] = {}

    def one(task_id: str) -> None:
        try:
            with waiter.expecting(task_id):
                if before_wait is not None:
                    before_wait.wait()
                outcomes[task_id] = waiter.wait(task_id, timeout)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            outcomes[task_id] = exc

    threads = [threading.Thread(target=one, args=(tid,), daemon=True) for tid in task_ids]
    for thread in threads:
        thread.start()
    return outcomes, threads


def subscribe(waiter: FetchTracking, backend: Any, task_id: str = "warm-up") -> None:
    """Round-trip one result through the listener, so it is subscribed before the test's own waiters."""
    outcomes, [thread] = run_waiters(waiter, [task_id], before_wait=None, timeout=15)
    waiter.wait_fetched({task_id})
    backend.mark_as_done(task_id, {"warm": True})
    thread.join(20)
    assert outcomes[task_id]["result"] == {"warm": True}, outcomes


def store_shuffled(backend: Any, task_ids: list[str]) -> None:
    for task_id in random.sample(task_ids, len(task_ids)):
        backend.mark_as_done(task_id, {"task": task_id, "n": task_ids.index(task_id)})


def assert_each_got_its_own(outcomes: dict[str, Any], task_ids: list[str]) -> None:
    assert sorted(outcomes) == sorted(task_ids)
    for index, task_id in enumerate(task_ids):
        meta = outcomes[task_id]
        assert isinstance(meta, dict), f"{task_id}: {meta!r}"
        assert (meta["status"], meta["task_id"], meta["result"]) == (
            "SUCCESS", task_id, {"task": task_id, "n": index})


@pytest.mark.timeout(60)
def test_64_threads_each_get_their_own_result_via_pubsub(tracking: FetchTracking,
                                                         worker_backend: Any) -> None:
    subscribe(tracking, worker_backend)
    task_ids = [f"task-{i:02d}-{os.urandom(4).hex()}" for i in range(THREADS)]
    outcomes, threads = run_waiters(tracking, task_ids, before_wait=None)
    # Stored after every waiter's first GET (which found nothing): every delivery comes through pub/sub.
    tracking.wait_fetched(set(task_ids))
    store_shuffled(worker_backend, task_ids)
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert_each_got_its_own(outcomes, task_ids)
    # One GET each, which found nothing: every result came through pub/sub.
    assert {tid: tracking.fetched[tid] for tid in task_ids} == {tid: [None] for tid in task_ids}


@pytest.mark.timeout(60)
def test_64_threads_racing_the_stores(web_celery: Celery, worker_backend: Any) -> None:
    waiter = ResultWaiter(web_celery.backend, poll_interval=0.5)
    task_ids = [f"race-{i:02d}-{os.urandom(4).hex()}" for i in range(THREADS)]
    go = threading.Barrier(THREADS + 1)
    outcomes, threads = run_waiters(waiter, task_ids, before_wait=go)
    go.wait(20)
    store_shuffled(worker_backend, task_ids)
    for thread in threads:
        thread.join(30)
    waiter.close()
    assert not any(thread.is_alive() for thread in threads)
    assert_each_got_its_own(outcomes, task_ids)


@pytest.mark.timeout(30)
def test_a_stored_result_is_found_by_get_the_wait_times_out_and_started_is_no_result(
        tracking: FetchTracking, worker_backend: Any) -> None:
    with tracking.expecting("early"):
        worker_backend.mark_as_done("early", {"ok": True})  # published to nobody
        assert tracking.wait("early", 10)["result"] == {"ok": True}
    assert tracking.fetched["early"] == ["SUCCESS"]  # the first GET delivered it
    subscribe(tracking, worker_backend)  # the STARTED message reaches the listener too
    with tracking.expecting("busy"):
        worker_backend.store_result("busy", {"pid": 1}, "STARTED")
        started = time.monotonic()
        with pytest.raises(ApiError, match="no result for task busy") as raised:
            tracking.wait("busy", 0.6)
        assert raised.value.status_code == 504 and 0.6 <= time.monotonic() - started < 3
        assert set(tracking.fetched["busy"]) == {"STARTED"}  # seen, and not taken for a result
        worker_backend.mark_as_done("busy", {"done": 1})
        assert tracking.wait("busy", 10)["result"] == {"done": 1}


@pytest.mark.timeout(30)
def test_waiter_survives_a_killed_listener_connection(
        tracking: FetchTracking, worker_backend: Any, clean_redis: redis.Redis) -> None:
    subscribe(tracking, worker_backend)
    # Only this test's pub/sub connection, found by its client name.
    ours = [c for c in clean_redis.client_list()
            if c.get("name") == "webapp-results-test" and "P" in c.get("flags", "")]
    assert len(ours) == 1
    outcomes, [thread] = run_waiters(tracking, ["after-kill"], before_wait=None, timeout=15)
    tracking.wait_fetched({"after-kill"})
    clean_redis.client_kill_filter(_id=ours[0]["id"])
    # Published while the listener may be down, after the waiter's only GET: the resubscribe nudge delivers.
    worker_backend.mark_as_done("after-kill", {"ok": 1})
    thread.join(20)
    assert outcomes["after-kill"]["result"] == {"ok": 1}, outcomes


def _wait_in_child(waiter: ResultWaiter, results: Any) -> None:
    with waiter.expecting("child-task"):
        results.put((waiter.wait("child-task", 15)["result"], os.getpid()))


@pytest.mark.timeout(60)
def test_listener_restarts_in_a_forked_child(web_celery: Celery, worker_backend: Any) -> None:
    context = multiprocessing.get_context("fork")
    found_nothing, results = context.Event(), context.Queue()
    waiter = FetchTracking(web_celery.backend, NEVER, found_nothing)
    try:
        subscribe(waiter, worker_backend)  # the parent's thread does not survive the fork
        found_nothing.clear()
        child = context.Process(target=_wait_in_child, args=(waiter, results))
        child.start()
        try:
            # Stored after the child's only GET (it never polls): only the child's own listener can deliver.
            assert found_nothing.wait(15)
            worker_backend.mark_as_done("child-task", {"from": "parent"})
            result, pid = results.get(timeout=20)
            assert result == {"from": "parent"} and pid == child.pid
        finally:
            child.join(10)
        assert child.exitcode == 0
        # The parent is unaffected.
        worker_backend.mark_as_done("parent-task", {"ok": 1})
        with waiter.expecting("parent-task"):
            assert waiter.wait("parent-task", 10)["result"] == {"ok": 1}
    finally:
        waiter.close()
