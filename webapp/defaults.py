"""Default settings of the web app, as named constants.

``create_app`` loads them with ``from_mapping``; environment variables
(``webapp.settings``) and the test mapping override them.
"""

__all__ = [
    "BROKER_RETRY_AFTER",
    "CELERY",
    "DEFAULT_TOP_K",
    "MAX_IMAGE_PIXELS",
    "MAX_TOP_K",
    "MAX_UPLOAD_MB",
    "MULTIPART_OVERHEAD_BYTES",
    "PROMETHEUS_MULTIPROC_DIR",
    "READY_CACHE_SECONDS",
    "RESULT_POLL_INTERVAL",
    "RESULT_TIMEOUT",
    "USE_BATCH_PROCESSING",
]

#: Largest accepted image file, in MiB (1 MiB = 1024 * 1024 bytes).
MAX_UPLOAD_MB = 10.0

#: Room left in ``MAX_CONTENT_LENGTH`` for the multipart framing and form
#: fields around a file of exactly ``MAX_UPLOAD_MB``.
MULTIPART_OVERHEAD_BYTES = 64 * 1024

#: Largest accepted width * height, checked on the header before any decoding.
MAX_IMAGE_PIXELS = 40_000_000

#: Seconds a synchronous /predict waits for its result; also the task's ``expires``.
RESULT_TIMEOUT = 30.0

#: Seconds between fallback GETs of a result key while a request waits.
RESULT_POLL_INTERVAL = 0.5

#: Predictions returned when the client sends no ``top_k``.
DEFAULT_TOP_K = 5

#: Largest ``top_k``: the number of ImageNet classes.
MAX_TOP_K = 1000

#: Send ``workers.classify_batch`` instead of ``workers.classify``.
USE_BATCH_PROCESSING = False

#: Seconds /readyz reuses its last answer, so load does not hammer the pidbox.
READY_CACHE_SECONDS = 2.0

#: Value of the Retry-After header when the broker cannot be reached.
BROKER_RETRY_AFTER = 5

#: Directory shared by gunicorn workers' metrics (None: single-process metrics).
PROMETHEUS_MULTIPROC_DIR: str | None = None

#: Celery settings the web process applies over ``celeryconfig``.
CELERY: dict[str, object] = {
    # One backend instance shared by all request threads instead of one per
    # thread (the web process only reads keys through it; redis-py's pool is
    # thread-safe).
    "result_backend_thread_safe": True,
    # Fail fast instead of holding a request thread on a dead Redis.
    "redis_socket_connect_timeout": 2.0,
    "redis_socket_timeout": 5.0,
    "broker_connection_timeout": 2.0,
}
