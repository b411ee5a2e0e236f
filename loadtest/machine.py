"""Describe the machine and software a measurement ran on (without importing torch)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

__all__ = ["STACK_SETTINGS", "describe", "summary_lines"]

#: Packages whose versions matter for the numbers.
_PACKAGES = ("torch", "torchvision", "timm", "celery", "kombu", "redis", "flask", "gunicorn", "locust")
#: Environment settings of the stack that change its speed (shown when set).
STACK_SETTINGS = (
    "MODEL",
    "DEVICE",
    "TORCH_THREADS",
    "WORKER_CONCURRENCY",
    "WEB_CONCURRENCY",
    "RESULT_TIMEOUT",
    "WORKER_PREFETCH_MULTIPLIER",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return "; ".join(line.strip() for line in out.stdout.splitlines() if line.strip()) or None


def _git(root: Path) -> str | None:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{' (with uncommitted changes)' if dirty else ''}"


def describe(root: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Machine, OS, Python, package versions, git commit and the stack settings in ``env``."""
    env = os.environ if env is None else env
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": _gpu(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "git": _git(root),
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
