"""Describe the machine and software a measurement ran on (without importing torch)."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

__all__ = ["STACK_SETTINGS", "describe", "summary_lines"]

#: Packages whose versions matter for the numbers.
_PACKAGES = ("torch", "torchvision", "timm", "celery", "kombu", "redis", "flask", "gunicorn", "locust")
#: Settings of the stack (``common.config`` names) that change its speed, shown when set.
STACK_SETTINGS = ("MODEL", "DEVICE", "TORCH_THREADS", "WORKER_POOL", "WORKER_CONCURRENCY", "WEB_THREADS",
                  "RESULT_TIMEOUT", "WORKER_PREFETCH_MULTIPLIER")


def _run(*argv: str, cwd: Path | None = None) -> str | None:
    """A command's output, None when it is missing or fails."""
    try:  # a missing command raises FileNotFoundError, an OSError
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe(root: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Machine, OS, Python, package versions, git commit and the stack settings in ``env``."""
    env = dict(os.environ) if env is None else env
    installed = {(d.metadata["Name"] or "").lower(): d.version for d in metadata.distributions()}
    versions = {name: installed[name] for name in _PACKAGES if name in installed}
    gpu = _run("nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader")
    head = _run("git", "rev-parse", "--short", "HEAD", cwd=root)
    dirty = _run("git", "status", "--porcelain", cwd=root)
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": "; ".join(line.strip() for line in gpu.splitlines() if line.strip()) if gpu else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "git": f"{head}{' (with uncommitted changes)' if dirty else ''}" if head else None,
        "settings": {key: env[key] for key in STACK_SETTINGS if key in env},
    }


def summary_lines(info: Mapping[str, Any]) -> list[str]:
    """Markdown bullet lines for a report."""
    packages = ", ".join(f"{k} {v}" for k, v in (info.get("packages") or {}).items())
    settings = ", ".join(f"{k}={v}" for k, v in (info.get("settings") or {}).items()) or "defaults"
    return [
        f"- CPU: {info.get('cpu')} ({info.get('logical_cpus')} logical CPUs), "
        f"memory {info.get('memory_gib')} GiB, GPU: {info.get('gpu') or 'none'}",
        f"- OS: {info.get('os')}; Python {info.get('python')}",
        f"- Packages: {packages}",
        f"- Code: git {info.get('git') or 'unknown'}",
        f"- Stack settings from the environment: {settings}",
    ]
