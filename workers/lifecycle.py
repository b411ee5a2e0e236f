"""Worker start-up: the banner, the model, the metrics port, the forward-pass watchdog."""
from __future__ import annotations

import logging
import time
from typing import Any

from celery import signals

from common.config import ConfigError, WorkerSettings
from common.contract import model_failure_key
from common.repository import BatchingConfig
from workers import metrics, runtime, watchdog
from workers.model import NULL_MODEL, SIMULATED_MODEL, ModelLoadError

__all__ = ["START_FAILED", "banner_lines", "warmup_sizes"]

logger = logging.getLogger("workers")

_RULE = "=" * 60
#: Exit status of a worker that could not start (a configuration or model error).
START_FAILED = 2
#: Whether this process's start failed (``celery.worker_main`` returns normally after it).
failed = False


def banner_lines(settings: WorkerSettings, served: runtime.ServedModel) -> list[str]:
    """The start-up banner (the seed guide's words), loud when the model is a benchmark stand-in."""
    batching, spec = served.batching, served.spec
    benchmark = {NULL_MODEL: "BENCHMARK MODEL: MODEL=null returns meaningless predictions at almost no cost",
                 SIMULATED_MODEL: f"BENCHMARK DEVICE: MODEL=simulated sleeps {settings.simulated_batch_ms:g} "
                 f"ms + {settings.simulated_item_ms:g} ms per image per batch; predictions are meaningless"}
    if batching.enabled:
        head = ["BATCH PROCESSING MODE ENABLED",
                f"Launching ML service with BATCH processing (size={batching.batch_size}, "
                f"timeout={batching.timeout}s)..."]
    else:
        head = ["INDIVIDUAL PROCESSING MODE", "Launching ML service with INDIVIDUAL processing..."]
    where = f"repository={spec.folder} version={spec.version} format={spec.format} " if spec else ""
    return [_RULE, head[0], _RULE, head[1],
            f"model={served.name} {where}queue={served.queue} "
            f"weights={settings.model_weights or 'packaged/default'} jit={settings.model_jit} "
            f"device={settings.device} pool={settings.pool} concurrency={settings.concurrency} "
            f"torch_threads={settings.torch_threads or 'default'} policy={batching.policy}",
            *([benchmark[settings.model]] if settings.model in benchmark else []),
            f"precision={settings.precision} gpu_decode={settings.gpu_decode}"]


def warmup_sizes(batching: BatchingConfig) -> range:
    """Each batch size the worker can run: a new shape costs a one-time setup (and cuDNN's tuning)."""
    return range(1, int(batching.batch_size or 1) + 1) if batching.enabled else range(1, 2)


def _load_model() -> None:
    """Load and warm the model, and watch this process's forward passes."""
    begin = time.perf_counter()
    classifier = runtime.classifier()
    classifier.ensure_setup()
    classifier.warmup(warmup_sizes(runtime.served().batching))
    logger.warning("Model %s ready on %s in %.1fs (%s)", classifier.model_name, classifier.device,
                   time.perf_counter() - begin, classifier.accelerator.describe())
    watchdog.install(runtime.settings().forward_timeout)


def _tell_the_web_app(model: str, failure: str | None) -> None:
    """Record (None: clear) why ``model`` failed to load, for ``GET /models``; best effort."""
    from celery.backends.base import BaseKeyValueStoreBackend

    from workers.app import app

    backend, key = app.backend, model_failure_key(model)
    if not isinstance(backend, BaseKeyValueStoreBackend):
        return
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
    global failed
    try:  # fatal errors: signals swallow Exceptions, not SystemExit
        settings = runtime.settings()
        for line in banner_lines(settings, runtime.served()):
            logger.warning(line)
        if settings.pool != "prefork":  # prefork children load their own copy
            _load_model()
    except (ConfigError, ModelLoadError) as exc:
        failed = True
        logger.critical("Cannot start the worker: %s", exc)
        if isinstance(exc, ModelLoadError):
            _tell_the_web_app(runtime.served().name, str(exc))
        raise SystemExit(START_FAILED) from exc
    _tell_the_web_app(runtime.served().name, None)
    metrics.serve(settings.metrics_port, settings.bind_host)


@signals.worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    """Prefork: each child process holds its own model (and watches its own tasks)."""
    _load_model()
