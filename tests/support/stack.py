"""The whole stack for end-to-end tests: a real worker and gunicorn on a free port."""
from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from tests.support.worker import WorkerProcess, client_app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    url: str
    worker: WorkerProcess
    web: WorkerProcess


def wait_ready(url: str, web: WorkerProcess, timeout: float = 120.0) -> None:
    """Poll /readyz until 200 (it answers 503 until a worker replies)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if web.proc is not None and web.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited:\n{web.log()}")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)  # polling an HTTP endpoint: there is nothing to block on
    raise AssertionError(f"/readyz never turned 200:\n{web.log()}")


@contextmanager
def running_stack(redis_url: str, *, batch: bool = False, **env: str) -> Iterator[Stack]:
    """gunicorn + ``python -m workers`` against ``redis_url``, torn down afterwards."""
    port = free_port()
    mode = {"USE_BATCH_PROCESSING": "true" if batch else "false", **env}
    with ExitStack() as stack:
        worker = stack.enter_context(WorkerProcess(["-m", "workers"], redis_url, **mode))
        worker.wait_ready(client_app(redis_url), "workers.ping")
        web = stack.enter_context(WorkerProcess(
            ["-m", "gunicorn", "-c", "webapp/gunicorn.conf.py", "webapp.wsgi:app"], redis_url,
            WEB_PORT=str(port), **mode))
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, web)
        yield Stack(url, worker, web)
