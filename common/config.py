"""Every environment variable the project reads, parsed once per process.

Each process loads a frozen settings class (:func:`load`) at start, so a bad value stops it
with a message naming the variable. :data:`VARIABLES` also lists what only the scripts, locust
or the tests read: docs/configuration.md is printed from it (``python -m common.config``).
Library code (``batching/``) reads no environment.
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from common import broker, contract

__all__ = ["COMMON", "GROUPS", "VARIABLES", "CelerySettings", "ConfigError", "GunicornSettings", "Variable",
           "WebSettings", "WorkerSettings", "async_queue_of", "load", "markdown", "parse_bool", "value",
           "with_redis_password"]

#: The batching policies (``batching.scheduler.POLICIES``; a test keeps them equal).
BATCH_POLICIES = ("timeout", "adaptive")
WORKER_POOLS = ("threads", "solo", "prefork")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: ``PRECISION`` values (``workers.accel`` resolves ``auto`` for the device).
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


class ConfigError(ValueError):
    """An environment variable has a value the process cannot use; the message names it."""


# -- parsers: str -> value, ValueError with what is expected ------------------

def parse_bool(text: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no`` or ``on/off``, any case."""
    word = text.strip().lower()
    if word in {"1", "true", "yes", "on"}:
        return True
    if word in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _number(kind: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        number = kind(text)
        if not ok(number):  # NaN fails every comparison
            raise ValueError(f"expected {expected}")
        return number
    return parse


_INF = float("inf")
_positive_int = _number(int, lambda n: n >= 1, "a positive integer")
_non_negative_int = _number(int, lambda n: n >= 0, "an integer >= 0")
_port = _number(int, lambda n: 0 <= n <= 65535, "a port number, 0..65535")
_positive_float = _number(float, lambda n: 0 < n < _INF, "a positive number")
_non_negative_float = _number(float, lambda n: 0 <= n < _INF, "a number >= 0")


def _api_keys(text: str) -> tuple[str, ...]:
    keys = tuple(key.strip() for key in text.split(",") if key.strip())
    if not keys:
        raise ValueError("expected comma-separated keys")
    return keys


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("expected a non-empty value")
    return text.strip()


def _memory(text: str) -> str:  # a Redis memory size
    word = text.strip().lower()
    if not re.fullmatch(r"[1-9][0-9]*(kb|mb|gb)?", word):
        raise ValueError("expected a size such as 256mb, 2gb or 1000000 (bytes)")
    return word


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:  # unset or empty: None
    return lambda text: parse(text) if text.strip() else None


def _choice(*choices: str, upper: bool = False) -> Callable[[str], str]:
    def parse(text: str) -> str:
        word = text.strip().upper() if upper else text.strip().lower()
        if word not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return word
    return parse


def _device(text: str) -> str:
    word = text.strip().lower()
    if word in {"auto", "cpu", "cuda"} or (word.startswith("cuda:") and word[5:].isdigit()):
        return word
    raise ValueError("expected auto, cpu, cuda or cuda:N")


def _top_k(text: str) -> int:
    return contract.check_top_k(int(text))


# -- the table ----------------------------------------------------------------

@dataclass(frozen=True)
class Variable:
    """One environment variable: ``default`` as written in the environment, ``parse`` (None: read by
    a script), ``shown`` (docs/configuration.md's default when ``default`` would mislead), ``group``
    (the heading above it in :data:`VARIABLES`)."""

    name: str
    default: str
    read_by: str
    help: str
    parse: Callable[[str], Any] | None = None
    shown: str | None = None
    group: str = ""


#: docs/configuration.md's sections, in order.
GROUPS = ("Broker", "Web", "Admission", "Worker", "Model", "GPU", "Stack", "Benchmarks and tests")
#: The variables a user usually sets: the README's table.
COMMON = ("USE_BATCH_PROCESSING", "BATCH_SIZE", "BATCH_TIMEOUT", "BATCH_POLICY", "WORKERS",
          "MODEL_REPOSITORY", "DEFAULT_MODEL", "REDIS_URL", "CELERY_BROKER_URL", "REDIS_PASSWORD", "API_KEYS",
          "DEVICE", "PRECISION", "WEB_PORT")


def _table(*rows: str | Variable) -> dict[str, Variable]:
    """The variables by name, each in the group of the heading above it."""
    table, group = {}, ""
    for row in rows:
        if isinstance(row, str):
            if row not in GROUPS:
                raise ValueError(f"{row!r} is not one of GROUPS")
            group = row
        else:
            table[row.name] = replace(row, group=group)
    return table


_CELERY = "all (celeryconfig)"
VARIABLES: dict[str, Variable] = _table(
    "Broker",
    Variable("REDIS_URL", "redis://127.0.0.1:6379/0", "all, `make`",
             "Redis used as broker and result backend (compose: the `redis` service)", _text),
    Variable("CELERY_BROKER_URL", "", _CELERY, "the broker alone, when it differs (not passed by compose)",
             _optional(_text), "`REDIS_URL`"),
    Variable("CELERY_RESULT_BACKEND", "", _CELERY, "the result backend alone, when it differs (not passed "
             "by compose)", _optional(_text), "`REDIS_URL`"),
    Variable("REDIS_PASSWORD", "", "all (celeryconfig), Redis", "password of a Redis URL that has none; the "
             "Redis `make up` or compose starts needs it", _optional(_text), "unset (compose: `change-me`)"),
    Variable("REDIS_MAXMEMORY", "256mb", "Redis", "memory cap of that Redis; full, it refuses writes "
             "(`noeviction`) instead of dropping tasks", _memory),
    Variable("BROKER_SOCKET_TIMEOUT", "10", _CELERY, "seconds any broker or result-backend socket waits for "
             "a connect or a reply; a RabbitMQ worker's heartbeat is three of them", _positive_float),
    Variable("CELERY_QUEUE", "inference", _CELERY, "queue of synchronous requests, the same for web and "
             "workers; `?async=true` ones go to `<CELERY_QUEUE>.async`, read when this one is empty (Redis)",
             _text),
    Variable("BROKER_VISIBILITY_TIMEOUT", "60", _CELERY,
             "seconds before Redis hands an unacknowledged task to another worker", _positive_int),
    Variable("BROKER_RESTORE_INTERVAL", "10", _CELERY,
             "seconds between a worker's checks for such tasks", _positive_int),
    Variable("BROKER_DEAD_CONSUMER_SECONDS", "5", _CELERY,
             "Redis: seconds without a worker's heartbeat (sent every fifth of them) before the tasks it "
             "held go back to the head of their queues", _positive_float),
    Variable("RESULT_EXPIRES", "3600", _CELERY, "seconds a result stays in Redis", _positive_int),
    Variable("TASK_TIME_LIMIT", "45", "worker (celeryconfig)", "hard time limit of a task, seconds; the "
             "soft one, failing the task cleanly, is two thirds of it (prefork pool only)", _positive_float),
    Variable("WORKER_PREFETCH_MULTIPLIER", "1", "worker (celeryconfig)", "messages a worker reserves per "
             "slot in individual mode (batch mode: two batches); more lets async work jump the queue",
             _positive_int),
    Variable("TASK_EVENTS", "true", _CELERY, "task events for Flower, \"task sent\" included", parse_bool),
    "Model",
    Variable("MODEL_REPOSITORY", "models", "web, worker",
             "folder of model folders (each: the network, `labels.txt`, an optional `model.toml`)", _text),
    Variable("DEFAULT_MODEL", "", "web, worker",
             "the model `/predict` serves, on `CELERY_QUEUE`", _optional(_text), "the only model"),
    Variable("MODEL", "", "worker",
             "the model this worker serves: a model of `MODEL_REPOSITORY`, else a built-in architecture "
             "(a torchvision name, `null` or `simulated`) served as the default model",
             _optional(_text), "the default model"),
    Variable("MODEL_WEIGHTS", "", "worker",
             "a built-in architecture's state dict, or `random` (set: `MODEL` is not looked up in the "
             "repository)", _optional(_text), "the model's own"),
    Variable("MODEL_JIT", "true", "worker",
             "trace and freeze the model with TorchScript (faster on the CPU); `false` keeps "
             "the eager module", parse_bool),
    "GPU",
    Variable("DEVICE", "auto", "worker", "`auto`, `cpu`, `cuda` or `cuda:N`", _device),
    Variable("PRECISION", "auto", "worker",
             "forward-pass precision: `fp32`, or `fp16`/`bf16` under `torch.autocast` (CUDA only: refused "
             "on the CPU); `auto` is `fp32` on the CPU, `fp16` on CUDA. On CUDA batches are also pinned "
             "and copied on a side stream, and in batch mode cuDNN times its algorithms for sizes 1.."
             "`BATCH_SIZE` at start", _choice(*PRECISIONS)),
    Variable("GPU_DECODE", "false", "worker",
             "CUDA: decode JPEGs with nvJPEG on the GPU and preprocess there (other formats, and any "
             "failure, use the CPU path; refused on the CPU)", parse_bool),
    "Benchmarks and tests",
    Variable("SIMULATED_BATCH_MS", "20", "worker",
             "benchmarks only, `MODEL=simulated` (a stand-in device; `MODEL=null` is a near-free "
             "model): fixed milliseconds a batch sleeps", _non_negative_float),
    Variable("SIMULATED_ITEM_MS", "2", "worker",
             "benchmarks only, `MODEL=simulated`: milliseconds each image adds to its batch's sleep",
             _non_negative_float),
    "Worker",
    Variable("USE_BATCH_PROCESSING", "false", "web, worker", "batch mode (see Batch mode)", parse_bool),
    Variable("BATCH_SIZE", "4", "worker", "most images per forward pass in batch mode", _positive_int),
    Variable("BATCH_TIMEOUT", "2.0", "worker",
             "most seconds the oldest request waits for its batch to fill", _positive_float),
    Variable("BATCH_POLICY", "timeout", "worker", "`timeout` or `adaptive`", _choice(*BATCH_POLICIES)),
    Variable("WORKER_POOL", "threads", "worker", "Celery pool: `threads`, `solo` or `prefork`",
             _choice(*WORKER_POOLS)),
    Variable("WORKER_CONCURRENCY", "2", "worker",
             "tasks (batch mode: batches) a worker runs at once; 1 with `solo`", _positive_int),
    Variable("TORCH_THREADS", "", "worker", "torch intra-op threads", _optional(_positive_int),
             "cores ÷ concurrency"),
    Variable("WORKER_METRICS_PORT", "9808", "worker",
             "port of the worker's `/metrics`, on `BIND_HOST` (0 turns it off)", _port),
    Variable("FORWARD_TIMEOUT", "50", "worker",
             "seconds a forward pass may run before the worker's watchdog ends the process "
             "(above `TASK_TIME_LIMIT`, below `BROKER_VISIBILITY_TIMEOUT`)", _positive_float),
    "Admission",
    Variable("MAX_IMAGE_PIXELS", str(contract.DEFAULT_MAX_IMAGE_PIXELS), "web, worker",
             "largest width × height accepted", _positive_int),
    Variable("MAX_DECODED_MB", "48", "worker",
             "largest decoded picture, MiB (width × height × bytes per pixel, after JPEG's reduced "
             "decoding); bounds a worker's memory and CPU per image", _positive_float),
    Variable("MAX_UPLOAD_MB", "10", "web, gunicorn", "largest upload, MiB", _positive_float),
    "Web",
    Variable("RESULT_TIMEOUT", "30", "web, gunicorn",
             "longest a synchronous `/predict` waits (a client may ask less: `?timeout=`, "
             "`Request-Timeout`); its task expires at that deadline", _positive_float),
    Variable("DEFAULT_TOP_K", str(contract.DEFAULT_TOP_K), "web",
             "predictions returned when the request gives no `top_k`", _top_k),
    Variable("READY_CACHE_SECONDS", "2.0", "web", "seconds `/readyz` reuses its last answer",
             _positive_float),
    Variable("IMAGES_BY_REFERENCE", "true", "web",
             "on a Redis broker, store each upload under a key of its own beside the queue and send "
             "the task without it (one raw copy instead of base64 in the message, twice); `false` "
             "puts the bytes in the message, as a RabbitMQ broker always does", parse_bool),
    "Admission",
    Variable("BROKER_RETRY_AFTER", "5", "web", "`Retry-After` seconds when the broker is unreachable",
             _positive_int),
    Variable("ASYNC_RESULT_TTL", "300", "web",
             "seconds an `?async=true` task may wait in the queue (its expiry); `/tasks/<id>` knows "
             "its id for this long plus `RESULT_EXPIRES`", _positive_float),
    Variable("MAX_QUEUE_LENGTH", "200", "web",
             "async tasks waiting in the async queue above which `/predict?async=true` answers 503 "
             "(about 3 s of one worker's capacity); 0 = unbounded", _non_negative_int),
    Variable("MAX_SYNC_QUEUE_LENGTH", "0", "web",
             "synchronous tasks waiting in the queue above which `/predict` answers 503; 0 = no bound "
             "but `MAX_LATENCY_MS` and `MAX_WAITING_REQUESTS`", _non_negative_int),
    Variable("MAX_LATENCY_MS", "500", "web",
             "a synchronous request whose predicted latency (the model's requests waiting in this web "
             "process ÷ their completion rate) is above this answers 503 with `Retry-After`; 0 = off",
             _non_negative_int),
    Variable("MAX_WAITING_REQUESTS", "", "web",
             "synchronous requests one web process lets wait for a result; more answer 503",
             _optional(_positive_int), "`WEB_THREADS` − 4"),
    Variable("API_KEYS", "", "web",
             "comma-separated API keys; when set, `/predict` and `/tasks` require "
             "`Authorization: Bearer <key>` (set it in the environment, never on a command line)",
             _optional(_api_keys), "unset (no auth)"),
    "Web",
    Variable("METRICS_PUBLIC", "true", "web", "`false` answers 404 on the web app's `/metrics`",
             parse_bool),
    Variable("PROMETHEUS_MULTIPROC_DIR", "", "web, gunicorn",
             "directory for multi-process metrics when `WEB_WORKERS` > 1", _optional(_text), "unset"),
    # nginx and gunicorn (deploy/stack.py, deploy/nginx.conf.template, webapp/gunicorn.conf.py).
    Variable("BIND_HOST", "127.0.0.1", "nginx, Flower",
             "address the web tier (nginx) and Flower listen on (compose: `0.0.0.0` inside containers)",
             _text),
    Variable("WEB_PORT", "8000", "nginx, `make`", "HTTP port (compose: the published host port)", _port),
    Variable("WEB_UPSTREAM", "", "gunicorn, nginx",
             "where gunicorn listens behind nginx and nginx sends requests: `unix:PATH` or `HOST:PORT` "
             "(compose: `0.0.0.0:8000` for web, `web:8000` for nginx)", _optional(_text),
             "`unix:` `RUN_DIR`/web.sock"),
    Variable("WEB_WORKERS", "1", "gunicorn", "gunicorn worker processes", _positive_int),
    Variable("WEB_THREADS", "64", "web, gunicorn", "threads per gunicorn worker", _positive_int),
    Variable("WEB_READ_TIMEOUT", "30", "nginx",
             "seconds nginx gives a client to send a request's head, and each pause in its body; then it "
             "closes the connection without an answer. nginx reads requests whole before gunicorn "
             "sees them, so slow clients hold no thread (docs/operations.md, Slow clients)", _positive_float),
    "Stack",
    Variable("LOG_LEVEL", "INFO", "web, worker", "log level of gunicorn and the Celery workers",
             _choice(*LOG_LEVELS, upper=True)),
    Variable("FLOWER_PORT", "5555", "Flower", "Flower's port (compose: the published host port)", _port),
    Variable("FLOWER_BASIC_AUTH", "", "Flower", "`user:password` Flower asks for (it reads it itself); "
             "required when it listens beyond loopback (`BIND_HOST`, compose)", _optional(_text), "unset"),
    Variable("STACK", "auto", "`make up`", "`docker`, `local`, or `auto` (Docker when an engine answers)"),
    Variable("READY_TIMEOUT", "180", "`make up`", "seconds to wait for `/readyz`"),
    Variable("WORKERS", "1", "`make up` (supervisord, compose)", "worker processes per model (a "
             "`model.toml`'s `workers` wins), each a Celery node `worker-<n>@host` with `/metrics` on "
             "`WORKER_METRICS_PORT` + n; compose: `ml_service` plus N − 1 `worker-extra` (see Scaling out)",
             _positive_int),
    Variable("RUN_DIR", "run", "`make up`", "folder of the local stack's pid file, sockets, logs and Redis "
             "data", _text),
    Variable("STOP_TIMEOUT", "120", "`make down`", "seconds to wait for the local stack to stop"),
    Variable("TAIL", "50", "`make logs`", "lines per log"),
    Variable("FOLLOW", "0", "`make logs`", "`1` follows the logs"),
    Variable("COMPOSE_FILE", "compose.yaml", "Docker Compose, `make up`",
             "e.g. `compose.yaml:compose.gpu.yaml` for the GPU override"),
    "Benchmarks and tests",
    Variable("PYTEST_ARGS", "", "`make test`", "extra pytest arguments", shown="empty"),
    Variable("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//", "tests", "RabbitMQ for the broker "
             "tests, a vhost per session; none answering: they are skipped", _text),
    Variable("TEST_REDIS_URL", "", "tests", "the only Redis database the tests flush",
             _optional(_text), "`REDIS_URL` with db 15"),
    Variable("PIP_CONSTRAINTS", "", "`make install`", "pip constraints file (`.ci/run`: "
             "`deploy/constraints-ci.txt`)", shown="empty"),
    Variable("USERS", "10", "`make loadtest`", "locust users"),
    Variable("SPAWN_RATE", "2", "`make loadtest`", "locust users started per second"),
    Variable("RUN_TIME", "60s", "`make loadtest`", "locust run time"),
    Variable("LOADTEST_REDIS_URL", "redis://127.0.0.1:6379/11", "`make compare`, `make tune`",
             "Redis for the stacks the driver starts (each variant adds its index to the db)", _text),
    Variable("LOADTEST_CORPUS_DIR", "", "locust", "photos to upload instead of `loadtest/corpus`",
             _optional(_text), "the bundled corpus"),
)


def raw(name: str, environ: Mapping[str, str] | None = None) -> str:
    """Variable ``name`` as written in ``environ``, else its default: for settings passed on unparsed."""
    text = (os.environ if environ is None else environ).get(name, "")
    return text or (VARIABLES[name].default if name in VARIABLES else "")


def value(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """Variable ``name`` parsed from ``environ`` (default: the process environment)."""
    variable = VARIABLES[name]
    if variable.parse is None:
        raise KeyError(f"{name} is read by scripts, not by Python")
    try:
        return variable.parse(raw(name, environ))
    except ValueError as exc:
        given = (os.environ if environ is None else environ).get(name)
        raise ConfigError(f"{name}={given!r} is invalid: {exc}") from None


# -- settings of each process -------------------------------------------------

def _env(name: str, *, secret: bool = False) -> Any:
    """A settings field read from variable ``name``; a ``secret`` one stays out of its repr."""
    if name not in VARIABLES:
        raise KeyError(f"{name} is not in common.config.VARIABLES")
    return field(repr=not secret, metadata={"env": name})


S = TypeVar("S")


def load(cls: type[S], environ: Mapping[str, str] | None = None, **overrides: Any) -> S:
    """Read every field of settings class ``cls``; ``overrides`` win over the environment."""
    source = os.environ if environ is None else environ
    values = {f.name: value(f.metadata["env"], source)
              for f in fields(cls) if "env" in f.metadata and f.name not in overrides}  # type: ignore[arg-type]
    return cls(**values, **overrides)


@dataclass(frozen=True)
class CelerySettings:
    """What ``celeryconfig.py`` turns into Celery settings."""

    redis_url: str = _env("REDIS_URL")
    redis_password: str | None = _env("REDIS_PASSWORD")
    broker_override: str | None = _env("CELERY_BROKER_URL")
    backend_override: str | None = _env("CELERY_RESULT_BACKEND")
    queue: str = _env("CELERY_QUEUE")
    visibility_timeout: int = _env("BROKER_VISIBILITY_TIMEOUT")
    restore_interval: int = _env("BROKER_RESTORE_INTERVAL")
    dead_consumer_seconds: float = _env("BROKER_DEAD_CONSUMER_SECONDS")
    result_expires: int = _env("RESULT_EXPIRES")
    time_limit: float = _env("TASK_TIME_LIMIT")
    prefetch_multiplier: int = _env("WORKER_PREFETCH_MULTIPLIER")
    task_events: bool = _env("TASK_EVENTS")
    socket_timeout: float = _env("BROKER_SOCKET_TIMEOUT")

    @property
    def broker_url(self) -> str:
        return with_redis_password(self.broker_override or self.redis_url, self.redis_password)

    @property
    def result_backend(self) -> str:
        return with_redis_password(self.backend_override or self.redis_url, self.redis_password)


def async_queue_of(queue: str) -> str:
    """The async queue that goes with synchronous queue ``queue``."""
    return f"{queue}.async"


def with_redis_password(url: str, password: str | None) -> str:
    """``url`` with ``password`` added when it is a Redis URL that carries none; else ``url``."""
    parts = urlsplit(url)
    if not password or not broker.is_redis(url) or parts.scheme == "unix" or parts.password is not None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}"))


@dataclass(frozen=True)
class WebSettings:
    """The web app's settings (``webapp.create_app`` keeps them in ``app.extensions["web_settings"]``)."""

    model_repository: str = _env("MODEL_REPOSITORY")
    default_model: str | None = _env("DEFAULT_MODEL")
    use_batch_processing: bool = _env("USE_BATCH_PROCESSING")
    max_image_pixels: int = _env("MAX_IMAGE_PIXELS")
    max_upload_mb: float = _env("MAX_UPLOAD_MB")
    result_timeout: float = _env("RESULT_TIMEOUT")
    default_top_k: int = _env("DEFAULT_TOP_K")
    ready_cache_seconds: float = _env("READY_CACHE_SECONDS")
    broker_retry_after: int = _env("BROKER_RETRY_AFTER")
    prometheus_multiproc_dir: str | None = _env("PROMETHEUS_MULTIPROC_DIR")
    async_result_ttl: float = _env("ASYNC_RESULT_TTL")
    result_expires: int = _env("RESULT_EXPIRES")
    max_queue_length: int = _env("MAX_QUEUE_LENGTH")
    max_sync_queue_length: int = _env("MAX_SYNC_QUEUE_LENGTH")
    max_waiting_requests: int | None = _env("MAX_WAITING_REQUESTS")
    max_latency_ms: int = _env("MAX_LATENCY_MS")
    images_by_reference: bool = _env("IMAGES_BY_REFERENCE")
    web_threads: int = _env("WEB_THREADS")
    api_keys: tuple[str, ...] | None = _env("API_KEYS", secret=True)
    metrics_public: bool = _env("METRICS_PUBLIC")

    @property
    def max_upload_bytes(self) -> int:
        """``MAX_UPLOAD_MB`` in bytes: the largest image file."""
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def waiting_limit(self) -> int:
        """``MAX_WAITING_REQUESTS``, else 4 below ``WEB_THREADS``: a few threads stay free for
        ``/readyz``, ``/tasks`` and the 503s themselves."""
        return self.max_waiting_requests or max(1, self.web_threads - 4)


@dataclass(frozen=True)
class GunicornSettings:
    """What ``webapp/gunicorn.conf.py`` needs (its ``--bind`` comes from ``deploy.stack``)."""

    workers: int = _env("WEB_WORKERS")
    threads: int = _env("WEB_THREADS")
    log_level: str = _env("LOG_LEVEL")
    result_timeout: float = _env("RESULT_TIMEOUT")
    prometheus_multiproc_dir: str | None = _env("PROMETHEUS_MULTIPROC_DIR")


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker process needs; ``python -m workers --batch`` overrides ``batch_mode``."""

    model: str | None = _env("MODEL")
    model_repository: str = _env("MODEL_REPOSITORY")
    default_model: str | None = _env("DEFAULT_MODEL")
    model_weights: str | None = _env("MODEL_WEIGHTS")
    model_jit: bool = _env("MODEL_JIT")
    device: str = _env("DEVICE")
    precision: str = _env("PRECISION")
    gpu_decode: bool = _env("GPU_DECODE")
    simulated_batch_ms: float = _env("SIMULATED_BATCH_MS")
    simulated_item_ms: float = _env("SIMULATED_ITEM_MS")
    batch_mode: bool = _env("USE_BATCH_PROCESSING")
    batch_size: int = _env("BATCH_SIZE")
    batch_timeout: float = _env("BATCH_TIMEOUT")
    batch_policy: str = _env("BATCH_POLICY")
    pool: str = _env("WORKER_POOL")
    pool_concurrency: int = _env("WORKER_CONCURRENCY")
    torch_threads: int | None = _env("TORCH_THREADS")
    metrics_port: int = _env("WORKER_METRICS_PORT")
    bind_host: str = _env("BIND_HOST")
    forward_timeout: float = _env("FORWARD_TIMEOUT")
    max_decoded_mb: float = _env("MAX_DECODED_MB")
    max_image_pixels: int = _env("MAX_IMAGE_PIXELS")
    log_level: str = _env("LOG_LEVEL")

    @property
    def concurrency(self) -> int:
        """Tasks (batch mode: batches) run at once: the solo pool runs one."""
        return 1 if self.pool == "solo" else self.pool_concurrency


# -- docs/configuration.md and the README's table ---------------------------------------

def _shown(v: Variable) -> str:
    return v.shown or (f"`{v.default}`" if v.default else "unset")


def markdown(names: tuple[str, ...] | None = None) -> str:
    """docs/configuration.md's tables, one per group; given ``names`` (e.g. :data:`COMMON`), one
    table of those."""
    if names is not None:
        return "\n".join(["| Variable | Default | Meaning |", "|---|---|---|",
                          *(f"| `{n}` | {_shown(VARIABLES[n])} | {VARIABLES[n].help} |" for n in names)])
    sections = []
    for group in GROUPS:
        rows = [f"| `{v.name}` | {_shown(v)} | {v.read_by} | {v.help} |"
                for v in VARIABLES.values() if v.group == group]
        sections.append("\n".join([f"## {group}", "", "| Variable | Default | Read by | Meaning |",
                                   "|---|---|---|---|", *rows]))
    return "\n\n".join(sections)


if __name__ == "__main__":  # docs/configuration.md's tables; with --common, the README's
    sys.stdout.write(markdown(COMMON if sys.argv[1:] == ["--common"] else None) + "\n")
