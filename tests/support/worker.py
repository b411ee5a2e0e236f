"""Real Celery worker processes for integration tests (a :class:`deploy.stack.Process` each)."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from deploy.stack import ROOT, Process

__all__ = ["BATCH_APP", "ROOT", "WorkerProcess", "client_app", "service_env", "start_batch_app"]

#: A worker of ``tests/integration/batch_app.py``'s batching tasks (no model: it starts in seconds).
BATCH_APP = ["-m", "celery", "-A", "tests.integration.batch_app", "worker", "--pool=threads",
             "--concurrency=2", "--task-events", "--loglevel=INFO", "--without-mingle", "--without-gossip"]


def client_app(redis_url: str) -> Celery:
    """A Celery app that sends and reads like the web app does, on ``redis_url``."""
    app = Celery("tests-client")
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=redis_url, result_backend=redis_url)
    return app


def service_env(redis_url: str, **env: str) -> dict[str, str]:
    """This process's environment pointed at ``redis_url``, worker metrics off, plus ``env``."""
    return {**os.environ, "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url,
            "CELERY_RESULT_BACKEND": redis_url, "WORKER_METRICS_PORT": "0", "PYTHONUNBUFFERED": "1", **env}


class WorkerProcess(Process):
    """``python ARGV...`` in its own process group against ``redis_url``, logging to a temporary file."""

    def __init__(self, argv: list[str], redis_url: str, **env: str) -> None:
        log = tempfile.NamedTemporaryFile(prefix="worker-", suffix=".log", delete=False)
        log.close()
        # Celery's warm shutdown finishes running tasks first: give it time before SIGKILL.
        super().__init__([sys.executable, *argv], log_path=Path(log.name), env=service_env(redis_url, **env),
                         grace=30.0)

    def wait_ready(self, app: Celery, ping_task: str, timeout: float = 90.0) -> None:
        """Round-trip a ping task; fail with the worker's log if it died or never answered."""
        try:
            app.send_task(ping_task).get(timeout=timeout)
        except CeleryTimeout:
            raise AssertionError(f"worker never answered {ping_task}:\n{self.log()}") from None

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        self.log_path.unlink(missing_ok=True)


def start_batch_app(app: Celery, redis_url: str, **env: str) -> WorkerProcess:
    """A started :data:`BATCH_APP` worker that has answered a ping."""
    worker = WorkerProcess(BATCH_APP, redis_url, **env).start()
    try:
        worker.wait_ready(app, "t.ping")
    except BaseException:
        worker.__exit__()
        raise
    return worker
