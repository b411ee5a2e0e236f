"""A Redis restart while the worker holds unacknowledged messages: it reconnects and serves on.

Redis runs as ``make up`` runs it (AOF, everysec) on a free port, so a restart
keeps the queue; the worker is the real ``python -m workers`` at production
settings. Before ``workers.consumer.Consumer``, closing the lost connection
crashed kombu's channel and the worker never consumed again.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from common.contract import CLASSIFY_TASK
from deploy.stack import Process, free_port
from tests.support.photos import encode, photo
from tests.support.worker import WorkerProcess, client_app


def _redis_server(port: int, data: Path) -> Process:
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(data)]
    return Process(argv, log_path=data / "redis.log", name="redis")


def _wait_pong(client: redis.Redis, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.ping():
                return
        except redis.ConnectionError:
            time.sleep(0.05)  # polling a server that is starting: nothing to block on
    raise AssertionError("redis-server did not answer")


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port = free_port()
    server = _redis_server(port, tmp_path).start()
    _wait_pong(redis.Redis(port=port))
    yield f"redis://127.0.0.1:{port}/0", tmp_path
    server.stop()


def test_the_worker_serves_on_after_a_redis_restart(restartable_redis: tuple[str, Path]) -> None:
    url, data = restartable_redis
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    app, client = client_app(url), redis.Redis.from_url(url)
    cat = encode(photo("chelsea"))
    with WorkerProcess(["-m", "workers"], url) as worker:
        worker.wait_ready(app, "workers.ping")
        for _ in range(40):
            app.send_task(CLASSIFY_TASK, (cat, 1))
        deadline = time.monotonic() + 60
        while client.hlen("unacked") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # polling Redis: there is nothing to block on
        assert client.hlen("unacked") > 0, "the worker never held a message"
        client.shutdown()  # with the AOF: what was accepted stays
        deadline = time.monotonic() + 30  # Redis stays down until the worker has noticed
        while "Connection to broker lost" not in worker.log() and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the worker's log: there is nothing to block on
        server = _redis_server(port, data).start()
        try:
            _wait_pong(client)
            after = app.send_task(CLASSIFY_TASK, (cat, 1))
            try:
                assert after.get(timeout=60)["predictions"][0]["class_id"] in range(281, 286)
            except Exception:
                raise AssertionError(f"no result after the restart:\n{worker.log()[-3000:]}") from None
            assert worker.proc is not None and worker.proc.poll() is None
            assert "Unrecoverable error" not in worker.log()
        finally:
            server.stop()
