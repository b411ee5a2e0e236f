"""Real Celery worker processes for integration tests."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

ROOT = Path(__file__).resolve().parents[2]


def client_app(redis_url: str) -> Celery:
    """A Celery app that sends and reads like the web app does, on ``redis_url``."""
    app = Celery("tests-client")
    app.config_from_object("celeryconfig")
    app.conf.update(broker_url=redis_url, result_backend=redis_url)
    return app


class WorkerProcess:
    """One ``python -m ...`` worker in its own process group, logging to a file."""

    def __init__(self, argv: list[str], redis_url: str, **env: str) -> None:
        self.argv = [sys.executable, *argv]
        self.env = {**os.environ, "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url,
                    "CELERY_RESULT_BACKEND": redis_url, "WORKER_METRICS_PORT": "0",
                    "PYTHONUNBUFFERED": "1", **env}
        self._log = tempfile.NamedTemporaryFile(prefix="worker-", suffix=".log", delete=False)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        if self.proc is not None:
            return self
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, app: Celery, ping_task: str, timeout: float = 90.0) -> None:
        """Round-trip a ping task; fail with the worker's log if it died or never answered."""
        try:
            app.send_task(ping_task).get(timeout=timeout)
        except CeleryTimeout:
            raise AssertionError(f"worker never answered {ping_task}:\n{self.log()}") from None

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signum)

    def wait(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """SIGTERM (warm shutdown), then SIGKILL if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        os.unlink(self._log.name)
