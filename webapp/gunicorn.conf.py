"""gunicorn settings for ``webapp.wsgi:app`` (``gunicorn -c webapp/gunicorn.conf.py webapp.wsgi:app``).

Threads, not processes, carry the concurrency: a request mostly waits on its
result, and one process keeps one result listener (``webapp.results``).
"""
import os
from typing import Any

_RESULT_TIMEOUT = float(os.environ.get("RESULT_TIMEOUT", "30"))

bind = f"0.0.0.0:{int(os.environ.get('WEB_PORT', '8000'))}"
worker_class = "gthread"
workers = int(os.environ.get("WEB_WORKERS", "1"))
threads = int(os.environ.get("WEB_THREADS", "64"))
# Above the longest legitimate request (a /predict waiting RESULT_TIMEOUT).
timeout = int(_RESULT_TIMEOUT) + 30
graceful_timeout = int(_RESULT_TIMEOUT) + 5
keepalive = 5
# Access logs cost throughput under load; WEB_ACCESS_LOG=- turns them on (stdout).
accesslog = os.environ.get("WEB_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("WEB_LOG_LEVEL", "info")


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live metrics when metrics are multi-process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
