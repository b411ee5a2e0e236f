"""The whole stack for end-to-end tests: a real worker and gunicorn on a free port."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from common.contract import PING_TASK
from deploy.stack import Process, StackError, command, free_port, wait_ready
from tests.support.brokers import client_for
from tests.support.worker import WorkerProcess

__all__ = ["Stack", "running_stack", "start_web"]


@dataclass
class Stack:
    url: str
    worker: Process
    web: Process


@contextmanager
def running_stack(redis_url: str, *, batch: bool = False, **env: str) -> Iterator[Stack]:
    """gunicorn + ``python -m workers`` against ``redis_url`` (the broker too, unless
    ``CELERY_BROKER_URL`` is given), torn down afterwards."""
    mode = {"USE_BATCH_PROCESSING": "true" if batch else "false", **env}
    client = client_for(env.get("CELERY_BROKER_URL", redis_url), redis_url,
                        env.get("CELERY_QUEUE", "inference"))
    with ExitStack() as stack:
        # deploy.stack's command lines, minus the interpreter WorkerProcess puts first.
        worker = stack.enter_context(WorkerProcess(command("worker")[1:], redis_url, **mode))
        worker.wait_ready(client, PING_TASK)
        url, web = start_web(stack, redis_url, **mode)
        yield Stack(url, worker, web)


def start_web(stack: ExitStack, redis_url: str, **env: str) -> tuple[str, WorkerProcess]:
    """gunicorn on a free port, stopped with ``stack``, once ``/readyz`` answers 200: its URL and process."""
    port = free_port()
    web = stack.enter_context(WorkerProcess(command("web")[1:], redis_url, BIND_HOST="127.0.0.1",
                                            WEB_PORT=str(port), **env))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/readyz", 120.0, interval=0.2, give_up=web.exited)
    except StackError as exc:
        raise AssertionError(f"/readyz never turned 200: {exc}\n{web.log()}") from None
    return url, web

