"""The whole stack for end-to-end tests: a real worker, and the web tier (nginx, gunicorn) on a free port."""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from common.contract import PING_TASK
from deploy.stack import WEB_TIER, Process, StackError, command, free_port, wait_ready
from tests.support.brokers import client_for
from tests.support.worker import WorkerProcess, service_env

__all__ = ["Stack", "running_stack", "start_web"]


@dataclass
class Stack:
    url: str
    worker: Process
    web: Process


@contextmanager
def running_stack(redis_url: str, *, batch: bool = False, **env: str) -> Iterator[Stack]:
    """The web tier + ``python -m workers`` against ``redis_url`` (the broker too, unless
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


def start_web(stack: ExitStack, redis_url: str, **env: str) -> tuple[str, Process]:
    """``deploy.stack.WEB_TIER`` (gunicorn, then nginx in front) on a free port and a ``RUN_DIR`` of
    its own, stopped with ``stack``, once ``/readyz`` answers 200 through nginx: its URL and gunicorn."""
    run_dir = Path(tempfile.mkdtemp(prefix="e2e-"))  # short: gunicorn's socket lives in it
    stack.callback(shutil.rmtree, run_dir, ignore_errors=True)
    port = free_port()
    tier_env = service_env(redis_url, BIND_HOST="127.0.0.1", WEB_PORT=str(port), RUN_DIR=str(run_dir),
                           **env)
    tier = [stack.enter_context(Process(command(name, tier_env), log_path=run_dir / f"{name}.log",
                                        env=tier_env, name=name, grace=30.0)) for name in WEB_TIER]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/readyz", 120.0, interval=0.2,
                   give_up=lambda: next(filter(None, (service.exited() for service in tier)), None))
    except StackError as exc:
        logs = "".join(f"\n{service.name} log:\n{service.log()}" for service in tier)
        raise AssertionError(f"/readyz never turned 200: {exc}{logs}") from None
    return url, tier[0]
