"""A Redis restart while the worker holds unacknowledged messages: it reconnects, serves on, and
every task it held is answered.

Redis runs as ``make up`` runs it (AOF, everysec) on a free port, so a restart keeps the queue;
the worker is the real ``python -m workers`` (``workers.app.Consumer`` keeps kombu's channel alive
when the lost connection is closed).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from common.contract import CLASSIFY_BATCH_TASK, CLASSIFY_TASK, PING_TASK
from deploy.stack import Process, free_port
from tests.support.photos import encode, photo
from tests.support.worker import WorkerProcess, client_app


def _until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)  # polling a server or a log: there is nothing to block on
    return condition()


def _redis_server(port: int, data: Path, client: redis.Redis) -> Process:
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(data)]
    server = Process(argv, log_path=data / "redis.log", name="redis").start()

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
    assert _until(answers, 20), "redis-server did not answer"
    return server


# Batch mode raises its prefetch at the start and again after the reconnect.
@pytest.mark.parametrize(("mode", "prefetch_raised"), [([], 0), (["--batch"], 2)])
def test_the_worker_serves_on_after_a_redis_restart_losing_nothing(tmp_path: Path, mode: list[str],
                                                                 prefetch_raised: int) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    app, client, cat = client_app(url), redis.Redis.from_url(url), encode(photo("chelsea"))
    server = _redis_server(port, tmp_path, client)
    try:
        with WorkerProcess(["-m", "workers", *mode], url) as worker:
            worker.wait_ready(app, PING_TASK)
            task = CLASSIFY_BATCH_TASK if mode else CLASSIFY_TASK
            sent = [app.send_task(task, (cat, 1)) for _ in range(40)]
            assert _until(lambda: client.hlen("unacked") > 0, 60), "the worker never held a message"
            client.shutdown()  # with the AOF: what was accepted stays
            server.stop()
            # Redis stays down until the worker has noticed.
            _until(lambda: "Connection to broker lost" in worker.log(), 30)
            server = _redis_server(port, tmp_path, client)
            after = app.send_task(CLASSIFY_TASK, (cat, 1))
            try:
                assert after.get(timeout=60)["predictions"][0]["class_id"] in range(281, 286)
            except Exception:
                raise AssertionError(f"no result after the restart:\n{worker.log()[-3000:]}") from None
            try:  # what it held when Redis went down, too (its landing lists are in the AOF)
                assert {r.get(timeout=60)["predictions"][0]["class_id"] for r in sent} <= set(range(281, 286))
            except Exception:
                raise AssertionError(f"a task was lost:\n{worker.log()[-3000:]}") from None
            assert worker.proc is not None and worker.proc.poll() is None
            assert worker.log().count("prefetch raised from") == prefetch_raised
            assert "Unrecoverable error" not in worker.log()
    finally:
        server.stop()
