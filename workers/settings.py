"""Worker settings, read once from the environment at process start."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from batching.scheduler import POLICIES
from workers.exceptions import ConfigError

__all__ = ["DEFAULTS", "WorkerSettings"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

#: Every default in one place; the README's table lists the same values.
DEFAULTS: dict[str, str] = {
    "MODEL": "efficientnet_lite0",
    "MODEL_WEIGHTS": "",
    "MODEL_JIT": "true",
    "DEVICE": "auto",
    "USE_BATCH_PROCESSING": "false",
    "BATCH_SIZE": "4",
    "BATCH_TIMEOUT": "2.0",
    "BATCH_POLICY": "timeout",
    "WORKER_POOL": "threads",
    "WORKER_CONCURRENCY": "",
    "TORCH_THREADS": "",
    "WORKER_METRICS_PORT": "9808",
    "MAX_IMAGE_PIXELS": "40000000",
    "WORKER_LOGLEVEL": "INFO",
}


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker process needs to know, validated."""

    model: str
    model_weights: str | None
    model_jit: bool
    device: str
    batch_mode: bool
    batch_size: int
    batch_timeout: float
    batch_policy: str
    pool: str
    concurrency: int
    torch_threads: int | None
    metrics_port: int
    max_image_pixels: int
    loglevel: str

    @property
    def mode(self) -> str:
        """``batch`` or ``individual``."""
        return "batch" if self.batch_mode else "individual"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 batch: bool | None = None) -> WorkerSettings:
        """Parse and check the environment; ``batch`` (from ``--batch``) wins over it."""
        source = os.environ if environ is None else environ
        env = {**DEFAULTS, **{k: v for k, v in source.items() if k in DEFAULTS}}
        batch_mode = _flag(env, "USE_BATCH_PROCESSING") if batch is None else batch
        policy = env["BATCH_POLICY"].strip().lower()
        if policy not in POLICIES:
            raise ConfigError(f"BATCH_POLICY must be one of {', '.join(POLICIES)}, got {policy!r}")
        device = env["DEVICE"].strip().lower()
        if device not in {"auto", "cpu", "cuda"} and not device.startswith("cuda:"):
            raise ConfigError(f"DEVICE must be auto, cpu or cuda[:N], got {device!r}")
        pool = env["WORKER_POOL"].strip().lower()
        if pool not in {"threads", "solo", "prefork"}:
            raise ConfigError(f"WORKER_POOL must be threads, solo or prefork, got {pool!r}")
        # batch mode runs one batch at a time; the second thread keeps the
        # consumer's results flowing while it runs. Individual mode overlaps
        # one image's decoding with another's forward pass.
        concurrency = _positive_int(env, "WORKER_CONCURRENCY") if env["WORKER_CONCURRENCY"] else 2
        return cls(
            model=env["MODEL"].strip() or DEFAULTS["MODEL"],
            model_weights=env["MODEL_WEIGHTS"].strip() or None,
            model_jit=_flag(env, "MODEL_JIT"),
            device=device,
            batch_mode=batch_mode,
            batch_size=_positive_int(env, "BATCH_SIZE"),
            batch_timeout=_positive_float(env, "BATCH_TIMEOUT"),
            batch_policy=policy,
            pool=pool,
            concurrency=1 if pool == "solo" else concurrency,
            torch_threads=_positive_int(env, "TORCH_THREADS") if env["TORCH_THREADS"] else None,
            metrics_port=_port(env, "WORKER_METRICS_PORT"),
            max_image_pixels=_positive_int(env, "MAX_IMAGE_PIXELS"),
            loglevel=env["WORKER_LOGLEVEL"].strip().upper() or "INFO",
        )


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env[name].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {env[name]!r}")


def _positive_int(env: Mapping[str, str], name: str) -> int:
    try:
        value = int(env[name].strip())
    except ValueError:
        raise ConfigError(f"{name} must be a positive integer, got {env[name]!r}") from None
    if value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {env[name]!r}")
    return value


def _positive_float(env: Mapping[str, str], name: str) -> float:
    try:
        value = float(env[name].strip())
    except ValueError:
        raise ConfigError(f"{name} must be a positive number of seconds, got {env[name]!r}") from None
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"{name} must be a positive number of seconds, got {env[name]!r}")
    return value


def _port(env: Mapping[str, str], name: str) -> int:
    try:
        value = int(env[name].strip())
    except ValueError:
        raise ConfigError(f"{name} must be a port number (0 disables), got {env[name]!r}") from None
    if not 0 <= value <= 65535:
        raise ConfigError(f"{name} must be a port number (0 disables), got {env[name]!r}")
    return value
