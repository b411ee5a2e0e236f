"""gunicorn settings for ``webapp.wsgi:app`` (``gunicorn -c webapp/gunicorn.conf.py webapp.wsgi:app``).

Threads, not processes, carry the concurrency: a request mostly waits on its
result, and one process keeps one result listener (``webapp.results``). The
worker class is gthread reading each request whole before a thread takes it
(``webapp.gunicorn_worker``), so slow clients hold no thread.
Values come from ``common.config.GunicornSettings`` (the environment, read once).
"""
from typing import Any

from common.config import GunicornSettings, load
from webapp import MULTIPART_OVERHEAD_BYTES
from webapp.gunicorn_worker import BufferingThreadWorker

_settings = load(GunicornSettings)

# Loopback unless BIND_HOST asks otherwise (containers set BIND_HOST=0.0.0.0).
bind = f"{_settings.bind_host}:{_settings.port}"
# A body over MAX_CONTENT_LENGTH (the app's) is not buffered: the app answers 413.
worker_class = BufferingThreadWorker.configured(
    read_timeout=_settings.read_timeout,
    max_body=int(_settings.max_upload_mb * 1024 * 1024) + MULTIPART_OVERHEAD_BYTES)
workers = _settings.workers
threads = _settings.threads
# Above the longest legitimate request (a /predict waiting RESULT_TIMEOUT).
timeout = int(_settings.result_timeout) + 30
graceful_timeout = int(_settings.result_timeout) + 5
keepalive = 5
# Access logs cost throughput under load; WEB_ACCESS_LOG=- turns them on (stdout).
accesslog = _settings.access_log
errorlog = "-"
loglevel = _settings.log_level


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live metrics when metrics are multi-process."""
    if _settings.prometheus_multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, _settings.prometheus_multiproc_dir)
