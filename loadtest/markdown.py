"""What every report shares: tables, numbers, one marked section of a file replaced, and the
machine and software a measurement ran on (described without importing torch)."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from .results import Spread

__all__ = ["STACK_SETTINGS", "cpu_model", "describe_machine", "fmt", "fmt_spread", "machine_lines",
           "replace_section", "table"]


def replace_section(path: Path, name: str, body: str, title: str = "# Benchmarks") -> None:
    """Put ``body`` between section ``name``'s markers in ``path``, leaving the rest of the file as it was
    (a missing file starts with ``title``, missing markers are appended, a BEGIN without END is an error)."""
    if not name or "-->" in name:
        raise ValueError(f"bad section name {name!r}: use a short word such as load-comparison")
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else f"{title}\n"
    start = text.find(begin)
    if start < 0:
        text = f"{text.rstrip()}\n\n{block}\n"
    else:
        stop = text.find(end, start)
        if stop < 0:
            raise ValueError(f"{path}: {begin} without {end}; fix the file by hand")
        text = text[:start] + block + text[stop + len(end) :]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary file and rename, so a crash never leaves half a report.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A pipe table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def fmt(value: float | None, digits: int = 1) -> str:
    """A number with ``digits`` decimals, or an em dash when there is none."""
    return "—" if value is None else f"{value:.{digits}f}"


def fmt_spread(value: Spread | None, digits: int = 1) -> str:
    """``median (min–max)``, or just the median when there was one repeat."""
    if value is None:
        return "—"
    if value.n == 1 or value.low == value.high:
        return fmt(value.median, digits)
    return f"{fmt(value.median, digits)} ({fmt(value.low, digits)}–{fmt(value.high, digits)})"


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


def cpu_model() -> str:
    """The CPU's model name."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_machine(root: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Machine, OS, Python, package versions, git commit and the stack settings in ``env``."""
    env = dict(os.environ) if env is None else env
    installed = {(d.metadata["Name"] or "").lower(): d.version for d in metadata.distributions()}
    versions = {name: installed[name] for name in _PACKAGES if name in installed}
    gpu = _run("nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader")
    head = _run("git", "rev-parse", "--short", "HEAD", cwd=root)
    dirty = _run("git", "status", "--porcelain", cwd=root)
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": "; ".join(line.strip() for line in gpu.splitlines() if line.strip()) if gpu else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
        "git": f"{head}{' (with uncommitted changes)' if dirty else ''}" if head else None,
        "settings": {key: env[key] for key in STACK_SETTINGS if key in env},
    }


def machine_lines(info: Mapping[str, Any]) -> list[str]:
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
