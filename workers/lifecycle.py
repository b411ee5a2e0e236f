"""Worker start-up: the banner, the model, the metrics port, the forward-pass watchdog."""
from __future__ import annotations

import logging
import time
from typing import Any

from celery import signals, states

from common.config import ConfigError, WorkerSettings
from common.contract import CLASSIFY_BATCH_TASK, CLASSIFY_TASK, model_failure_key
from common.repository import BatchingConfig
from workers import metrics, runtime, watchdog
from workers.exceptions import ModelLoadError
from workers.model import NULL_MODEL, SIMULATED_MODEL

__all__ = ["START_FAILED", "banner_lines", "start_failed", "warmup_sizes"]

logger = logging.getLogger("workers")

_RULE = "=" * 60
#: Exit status of a worker that could not start (a configuration or model error).
START_FAILED = 2
_failed = False


def start_failed() -> bool:
    """Whether this process's start failed (``celery.worker_main`` returns normally after it)."""
    return _failed


def banner_lines(settings: WorkerSettings, served: runtime.ServedModel) -> list[str]:
    """The start-up banner (the seed guide's words in batch mode), with the model's own batching."""
    batching, spec = served.batching, served.spec
    if batching.enabled:
        head = ["BATCH PROCESSING MODE ENABLED",
                f"Launching ML service with BATCH processing (size={batching.batch_size}, "
                f"timeout={batching.timeout}s)..."]
    else:
        head = ["INDIVIDUAL PROCESSING MODE", "Launching ML service with INDIVIDUAL processing..."]
    where = f"repository={spec.folder} version={spec.version} format={spec.format} " if spec else ""
    return [_RULE, head[0], _RULE, head[1],
            f"model={served.name} {where}queue={served.queue} "
            f"weights={settings.model_weights or 'packaged/default'} "
            f"jit={settings.model_jit} "
            f"device={settings.device} pool={settings.pool} concurrency={settings.concurrency} "
            f"torch_threads={settings.torch_threads or 'default'} policy={batching.policy}",
            *_benchmark_lines(settings),
            f"autocast={settings.autocast} channels_last={settings.channels_last} "
            f"pin_memory={settings.pin_memory} cudnn_benchmark={settings.cudnn_benchmark} "
            f"gpu_decode={settings.gpu_decode} cuda_copy_stream={settings.cuda_copy_stream}"]


def _benchmark_lines(settings: WorkerSettings) -> list[str]:
    """A loud line when the model is a benchmark stand-in (its answers are noise)."""
    if settings.model == NULL_MODEL:
        return ["BENCHMARK MODEL: MODEL=null returns meaningless predictions at almost no cost"]
    if settings.model == SIMULATED_MODEL:
        return [f"BENCHMARK DEVICE: MODEL=simulated sleeps {settings.simulated_batch_ms:g} ms + "
                f"{settings.simulated_item_ms:g} ms per image per batch; predictions are meaningless"]
    return []


def warmup_sizes(batching: BatchingConfig) -> range:
    """Batch sizes to warm up at start: each size a worker can run (a new shape costs the
    backend a one-time setup, and with ``CUDNN_BENCHMARK`` cuDNN's timing of its algorithms)."""
    return range(1, int(batching.batch_size or 1) + 1) if batching.enabled else range(1, 2)


def _load_model(settings: WorkerSettings) -> None:
    """Load and warm the model: each input shape's first pass pays a one-time setup cost."""
    begin = time.perf_counter()
    classifier = runtime.classifier()
    classifier.ensure_setup()
    classifier.warmup(warmup_sizes(runtime.served().batching))
    logger.warning("Model %s ready on %s in %.1fs (%s)", classifier.model_name, classifier.device,
                   time.perf_counter() - begin, classifier.accelerator.describe())


def _tell_the_web_app(model: str, failure: str | None) -> None:
    """Record (or clear, on success) why ``model`` failed to load where ``GET /models`` reads it;
    best effort: a result backend that is down or not a key-value store only loses the reason."""
    from celery.backends.base import BaseKeyValueStoreBackend

    from workers.app import app

    backend = app.backend
    if not isinstance(backend, BaseKeyValueStoreBackend):
        return
    key = model_failure_key(model)
    try:
        if failure is None:
            backend.delete(key)
        else:
            backend.set(key, failure[:1000])
    except Exception as exc:  # noqa: BLE001 - the worker's start must not depend on it
        logger.warning("Could not record model %s's load state in the result backend: %s", model, exc)


@signals.celeryd_after_setup.connect
def _start(sender: Any = None, instance: Any = None, conf: Any = None, **_: Any) -> None:
    """Runs once in the worker's main process, before it consumes anything."""
    global _failed
    try:  # fatal errors: signals swallow Exceptions, not SystemExit
        settings = runtime.settings()
        for line in banner_lines(settings, runtime.served()):
            logger.warning(line)
        if settings.pool != "prefork":  # prefork children load their own copy
            _load_model(settings)
            watchdog.install(settings.forward_timeout)
    except (ConfigError, ModelLoadError) as exc:
        _failed = True
        logger.critical("Cannot start the worker: %s", exc)
        if isinstance(exc, ModelLoadError):
            _tell_the_web_app(runtime.served().name, str(exc))
        raise SystemExit(START_FAILED) from exc
    _tell_the_web_app(runtime.served().name, None)
    metrics.serve(settings.metrics_port, settings.metrics_host)


@signals.worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    """Prefork: each child process holds its own model (and watches its own tasks)."""
    _load_model(runtime.settings())
    watchdog.install(runtime.settings().forward_timeout)


@signals.task_postrun.connect
def _count_individual(sender: Any = None, state: str | None = None, **_: Any) -> None:
    """Batches are counted per request by ``workers.metrics``; single tasks here."""
    if getattr(sender, "name", None) == CLASSIFY_TASK and state != states.IGNORED:  # IGNORED: not run
        metrics.count_requests("succeeded" if state == states.SUCCESS else "failed")


@signals.task_revoked.connect
def _count_revoked(sender: Any = None, expired: bool = False, **_: Any) -> None:
    """Requests never computed, both modes: expired before they ran, or revoked by id.

    Celery sends it for a message already expired when received or handed to the pool;
    ``batching`` for one expired in the buffer or just before its forward pass.
    """
    if getattr(sender, "name", None) in (CLASSIFY_TASK, CLASSIFY_BATCH_TASK):
        metrics.count_requests("expired" if expired else "revoked")
