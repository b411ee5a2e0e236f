"""The whole stack for end-to-end tests: a real worker, and the web tier (nginx, gunicorn) on a free port."""
from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
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
        url, web = start_web(stack, redis_url, watch=(worker,), **mode)  # starts while the worker loads
        worker.wait_ready(client, PING_TASK)
        yield Stack(url, worker, web)


def start_web(stack: ExitStack, redis_url: str, *, ready: str = "/readyz", watch: tuple[Process, ...] = (),
              **env: str) -> tuple[str, Process]:
    """``deploy.stack.WEB_TIER`` on a free port and a ``RUN_DIR`` of its own, stopped with ``stack``, once
    ``ready`` answers 200 through nginx (unless a ``watch`` process exits first): its URL and gunicorn."""
    run_dir = Path(tempfile.mkdtemp(prefix="e2e-"))  # short: gunicorn's socket lives in it
    stack.callback(shutil.rmtree, run_dir, ignore_errors=True)
    port = free_port()
    tier_env = service_env(redis_url, BIND_HOST="127.0.0.1", WEB_PORT=str(port), RUN_DIR=str(run_dir),
                           **env)
    tier = [stack.enter_context(Process(command(name, tier_env), log_path=run_dir / f"{name}.log",
                                        env=tier_env, name=name, grace=30.0)) for name in WEB_TIER]
    url, watched = f"http://127.0.0.1:{port}", (*tier, *watch)
    stack.callback(_terminate, watched)  # first at exit: all shut down at once, then each is waited for
    try:
        wait_ready(f"{url}{ready}", 120.0, interval=0.2,
                   give_up=lambda: next(filter(None, (service.exited() for service in watched)), None))
    except StackError as exc:
        logs = "".join(f"\n{service.name} log:\n{service.log()}" for service in watched)
        raise AssertionError(f"{ready} never turned 200: {exc}{logs}") from None
    return url, tier[0]


def _terminate(processes: tuple[Process, ...]) -> None:
    for process in processes:
        with suppress(ProcessLookupError):
            process.signal(signal.SIGTERM)
