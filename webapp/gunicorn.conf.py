"""gunicorn for ``webapp.wsgi:app``: stock gthread is enough, as nginx in front reads each request whole."""
from typing import Any

from common.config import GunicornSettings, load

_settings = load(GunicornSettings)

worker_class = "gthread"
workers = _settings.workers
threads = _settings.threads
timeout = int(_settings.result_timeout) + 30  # above a /predict waiting RESULT_TIMEOUT
graceful_timeout = int(_settings.result_timeout) + 5
keepalive = 75  # above nginx's upstream keepalive_timeout (deploy/nginx.conf.template)
errorlog = "-"
control_socket_disable = True  # its default path is one per user, shared by every gunicorn on the host
loglevel = _settings.log_level.lower()


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live metrics when metrics are multi-process."""
    if _settings.prometheus_multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, _settings.prometheus_multiproc_dir)
