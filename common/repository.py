"""The model repository: a folder of model folders, read without torch.

Triton's layout, with PyTorch's formats::

    MODEL_REPOSITORY/
      flowers/                 # the model's name
        labels.txt             # one label per line, in output order
        model.toml             # optional: preprocessing, batching, description, workers
        model.pt2              # a torch.export program (batch dimension dynamic), or
        model.pt               # a TorchScript file, or neither and model.toml names an architecture
        3/ ...                 # optional numbered versions, each a folder like the above: the highest serves

Each version folder may hold its own ``labels.txt`` and ``model.toml``; what it lacks
comes from the model folder. The web app reads this (names, labels count, limits) to
route and check requests; the workers read it to load their model
(``workers.formats``). Nothing here opens a network file: a folder that cannot serve is
a :class:`BrokenModel` with the reason, and the other models are not affected.
"""
from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import BATCH_POLICIES

__all__ = [
    "BUILT_IN_DEFAULT",
    "EXPORT_FILE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "LABELS_FILE",
    "MODEL_NAME",
    "SCRIPT_FILE",
    "TOML_FILE",
    "BatchingConfig",
    "BrokenModel",
    "ModelSpec",
    "PreprocessConfig",
    "Repository",
    "RepositoryError",
    "queues_of",
    "read_labels",
    "scan",
]

#: The architecture a worker serves when ``MODEL`` is unset and there is no repository folder.
BUILT_IN_DEFAULT = "efficientnet_lite0"
EXPORT_FILE = "model.pt2"
SCRIPT_FILE = "model.pt"
TOML_FILE = "model.toml"
LABELS_FILE = "labels.txt"
#: A model's name: its folder's, as it appears in URLs, queue names and metric labels.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: Names a model may not take: ``<CELERY_QUEUE>.async`` is the default model's async queue.
_RESERVED_NAMES = frozenset({"async"})
#: Resampling filters the preprocessor implements.
INTERPOLATIONS = ("bilinear", "bicubic")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Longest ``labels.txt`` read (a million labels of 64 bytes).
_MAX_LABELS_BYTES = 64 * 2**20


class RepositoryError(ValueError):
    """A model folder that cannot serve; the message names the file and the fix."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model wants its input: resize the shorter side to ``resize_size`` with
    ``interpolation``, centre-crop ``input_size`` square, scale to [0, 1], normalise."""

    input_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not 0 < self.input_size <= self.resize_size:
            raise ValueError(
                f"need 0 < input_size <= resize_size, got {self.input_size} and {self.resize_size}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, not {self.interpolation!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values each, std > 0; got {self.mean}, {self.std}")

    @property
    def crop_pct(self) -> float:
        """Fraction of the resized shorter side kept by the centre crop (timm's name)."""
        return self.input_size / self.resize_size


@dataclass(frozen=True)
class BatchingConfig:
    """A model's batching; None fields take ``USE_BATCH_PROCESSING``, ``BATCH_SIZE``,
    ``BATCH_TIMEOUT`` and ``BATCH_POLICY`` (:meth:`resolved`)."""

    enabled: bool | None = None
    batch_size: int | None = None
    timeout: float | None = None
    policy: str | None = None

    def resolved(self, enabled: bool, batch_size: int, timeout: float, policy: str) -> BatchingConfig:
        """Every field set: this model's own values, else the ones given (the environment's)."""
        return BatchingConfig(
            enabled=enabled if self.enabled is None else self.enabled,
            batch_size=batch_size if self.batch_size is None else self.batch_size,
            timeout=timeout if self.timeout is None else self.timeout,
            policy=policy if self.policy is None else self.policy)


@dataclass(frozen=True)
class ModelSpec:
    """One servable model version, as its folder describes it."""

    name: str
    version: int
    #: The version folder (the model folder when it has no numbered versions).
    folder: Path
    #: ``export`` (model.pt2), ``torchscript`` (model.pt) or ``architecture`` (model.toml).
    format: str
    #: The label of each output, in order; None for a built-in ImageNet model.
    labels: tuple[str, ...] | None
    labels_file: Path | None
    preprocess: PreprocessConfig
    #: Whether model.toml set ``[preprocess]`` (else the loader may use the network's own).
    preprocess_given: bool = False
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    description: str = ""
    #: torchvision or timm architecture name (``architecture`` format).
    architecture: str | None = None
    #: The state dict file (``architecture`` format); None: the architecture's own weights.
    weights: Path | None = None
    #: Worker processes ``make up`` starts for it; None: ``WORKERS``.
    workers: int | None = None

    @property
    def network_file(self) -> Path | None:
        """The file the network is read from (the weights for an architecture)."""
        if self.format == "export":
            return self.folder / EXPORT_FILE
        if self.format == "torchscript":
            return self.folder / SCRIPT_FILE
        return self.weights

    @property
    def num_labels(self) -> int:
        """Outputs the model must have (1000 for a built-in ImageNet model)."""
        return 1000 if self.labels is None else len(self.labels)

    def describe(self) -> dict[str, Any]:
        """What ``GET /models/<name>`` says of it (JSON-ready)."""
        p = self.preprocess
        return {
            "name": self.name, "version": str(self.version), "format": self.format,
            "description": self.description, "labels": self.num_labels,
            "input_size": p.input_size,
            "preprocess": {"input_size": p.input_size, "resize_size": p.resize_size,
                           "interpolation": p.interpolation, "mean": list(p.mean), "std": list(p.std)},
        }


@dataclass(frozen=True)
class BrokenModel:
    """A model folder that cannot serve, and why (the file and the fix)."""

    name: str
    reason: str


@dataclass(frozen=True)
class Repository:
    """Every model folder of a repository: the good ones and the broken ones, by name."""

    root: Path
    models: Mapping[str, ModelSpec]
    broken: Mapping[str, BrokenModel]

    def names(self) -> list[str]:
        """Every model's name, servable or not, sorted."""
        return sorted({*self.models, *self.broken})

    def default_name(self, asked: str | None) -> str | None:
        """``DEFAULT_MODEL`` when set, else the only model, else the built-in default's folder when
        there is one (so a model added beside it leaves ``/predict`` as it was); None: no one choice."""
        if asked:
            return asked
        names = self.names()
        if len(names) == 1:
            return names[0]
        return BUILT_IN_DEFAULT if BUILT_IN_DEFAULT in names else None


def queues_of(model: str, default: str | None, base: str) -> tuple[str, str]:
    """Model ``model``'s sync and async queues: ``base`` and ``base.async`` for the default
    model (so a one-model stack keeps ``CELERY_QUEUE``), ``base.<model>`` and
    ``base.<model>.async`` for the others."""
    queue = base if model == default else f"{base}.{model}"
    return queue, f"{queue}.async"


def scan(root: Path | str) -> Repository:
    """Read every model folder under ``root`` (hidden and ``_`` folders are skipped).

    A missing ``root`` is a :class:`RepositoryError`; a folder that cannot serve is
    listed in ``broken``, never raised.
    """
    root = Path(root)
    if not root.is_dir():
        raise RepositoryError(f"MODEL_REPOSITORY={root} is not a folder; point it at a folder of model "
                              "folders (see README, \"Your own models\")")
    models: dict[str, ModelSpec] = {}
    broken: dict[str, BrokenModel] = {}
    for folder in sorted(root.iterdir()):
        if not folder.is_dir() or folder.name.startswith((".", "_")):
            continue
        try:
            models[folder.name] = read_model(folder)
        except RepositoryError as exc:
            broken[folder.name] = BrokenModel(folder.name, str(exc))
    return Repository(root, models, broken)


def read_model(folder: Path) -> ModelSpec:
    """The servable version of the model in ``folder``; :class:`RepositoryError` if it cannot serve."""
    name = folder.name
    if not MODEL_NAME.fullmatch(name) or name in _RESERVED_NAMES:
        raise RepositoryError(f"{folder}: a model's folder name is its name in URLs and queues: use letters, "
                              f"digits, '_' and '-' (at most 64, not {sorted(_RESERVED_NAMES)}); rename it")
    versions = sorted((int(child.name), child) for child in folder.iterdir()
                      if child.is_dir() and child.name.isdigit())
    version, where = versions[-1] if versions else (1, folder)
    settings = {**_read_toml(folder / TOML_FILE), **_read_toml(where / TOML_FILE)} if versions \
        else _read_toml(folder / TOML_FILE)
    toml_file = where / TOML_FILE if (where / TOML_FILE).is_file() else folder / TOML_FILE
    labels_file = where / LABELS_FILE if (where / LABELS_FILE).is_file() else folder / LABELS_FILE
    spec = _spec(name, version, where, settings, toml_file)
    labels = read_labels(labels_file)
    return ModelSpec(**{**spec, "labels": labels, "labels_file": labels_file})


_TOP_KEYS = {"description", "architecture", "weights", "workers", "preprocess", "batching"}
_PREPROCESS_KEYS = {"input_size", "resize_size", "interpolation", "mean", "std"}
_BATCHING_KEYS = {"enabled", "batch_size", "timeout", "policy"}


def _spec(name: str, version: int, folder: Path, settings: dict[str, Any], toml_file: Path) -> dict[str, Any]:
    """ModelSpec's fields but the labels, from a version folder and its merged model.toml."""
    _only(settings, _TOP_KEYS, toml_file, "")
    files = [f for f in (EXPORT_FILE, SCRIPT_FILE) if (folder / f).is_file()]
    architecture = _typed(settings, "architecture", str, toml_file)
    if len(files) + (architecture is not None) != 1:
        found = ", ".join([*files, *(["architecture in model.toml"] if architecture else [])]) or "nothing"
        raise RepositoryError(
            f"{folder}: a model needs exactly one network: {EXPORT_FILE} (torch.export), {SCRIPT_FILE} "
            f"(TorchScript) or architecture = \"...\" in {TOML_FILE}; found {found}")
    weights_name = _typed(settings, "weights", str, toml_file)
    if weights_name is not None and architecture is None:
        raise RepositoryError(f"{toml_file}: weights = ... goes with architecture = ...; "
                              f"{files[0]} holds its own weights: remove it")
    weights = _inside(folder, weights_name, toml_file) if weights_name is not None else None
    if weights is not None and not weights.is_file():
        raise RepositoryError(f"{toml_file}: weights = {weights_name!r}, but {weights} is not a file; "
                              "copy the state dict there")
    preprocess_table = _table(settings, "preprocess", _PREPROCESS_KEYS, toml_file)
    workers = _typed(settings, "workers", int, toml_file)
    if workers is not None and workers < 1:
        raise RepositoryError(f"{toml_file}: workers must be >= 1, got {workers}")
    network = "architecture" if architecture else ("export" if files[0] == EXPORT_FILE else "torchscript")
    return {
        "name": name, "version": version, "folder": folder, "format": network,
        "preprocess": _preprocess(preprocess_table, toml_file), "preprocess_given": bool(preprocess_table),
        "batching": _batching(_table(settings, "batching", _BATCHING_KEYS, toml_file), toml_file),
        "description": _typed(settings, "description", str, toml_file) or "",
        "architecture": architecture, "weights": weights, "workers": workers,
    }


def read_labels(path: Path) -> tuple[str, ...]:
    """``labels.txt``: one label per line (blank lines at the end ignored); RepositoryError if unusable."""
    if not path.is_file():
        raise RepositoryError(f"{path} is missing: write one label per line, in the order of the model's "
                              "outputs")
    if path.stat().st_size > _MAX_LABELS_BYTES:
        raise RepositoryError(f"{path} is over {_MAX_LABELS_BYTES // 2**20} MiB: is it the labels file?")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RepositoryError(f"{path} is not UTF-8 text ({exc}); save it as UTF-8") from None
    labels = tuple(line.strip() for line in text.rstrip("\r\n").splitlines())
    if not labels or not labels[0]:
        raise RepositoryError(f"{path} holds no labels: write one label per line")
    if any(not label for label in labels):
        raise RepositoryError(f"{path}: line {labels.index('') + 1} is blank; every output needs a label")
    return labels


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path} is not valid TOML: {exc}; fix it (see README, \"Your own models\")") \
            from None


def _only(table: Mapping[str, Any], allowed: set[str], path: Path, section: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise RepositoryError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(section + key for key in unknown)}; known: "
                              f"{', '.join(section + key for key in sorted(allowed))}")


def _typed(table: Mapping[str, Any], key: str, kind: type, path: Path) -> Any:
    item = table.get(key)
    if item is None:
        return None
    if isinstance(item, bool) and kind is not bool or not isinstance(item, kind):
        raise RepositoryError(f"{path}: {key} must be a {kind.__name__}, got {item!r}")
    return item


def _table(settings: Mapping[str, Any], key: str, allowed: set[str], path: Path) -> dict[str, Any]:
    table = settings.get(key, {})
    if not isinstance(table, dict):
        raise RepositoryError(f"{path}: {key} must be a table ([{key}]), got {table!r}")
    _only(table, allowed, path, f"{key}.")
    return table


def _number(table: Mapping[str, Any], key: str, path: Path) -> float | None:
    item = table.get(key)
    if item is None:
        return None
    if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item):
        raise RepositoryError(f"{path}: {key} must be a number, got {item!r}")
    return float(item)


def _triple(table: Mapping[str, Any], key: str, default: tuple[float, float, float],
            path: Path) -> tuple[float, float, float]:
    item = table.get(key)
    if item is None:
        return default
    if (not isinstance(item, list) or len(item) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in item)):
        raise RepositoryError(f"{path}: preprocess.{key} must be 3 numbers (R, G, B), got {item!r}")
    return (float(item[0]), float(item[1]), float(item[2]))


def _preprocess(table: Mapping[str, Any], path: Path) -> PreprocessConfig:
    input_size = _typed(table, "input_size", int, path) or 224
    # Without resize_size, the classic 224/256 ratio (ImageNet's 0.875 crop).
    resize_size = _typed(table, "resize_size", int, path) or round(input_size / 0.875)
    try:
        return PreprocessConfig(
            input_size=input_size, resize_size=resize_size,
            interpolation=_typed(table, "interpolation", str, path) or "bilinear",
            mean=_triple(table, "mean", IMAGENET_MEAN, path), std=_triple(table, "std", IMAGENET_STD, path))
    except ValueError as exc:
        raise RepositoryError(f"{path}: [preprocess] {exc}") from None


def _batching(table: Mapping[str, Any], path: Path) -> BatchingConfig:
    batch_size = _typed(table, "batch_size", int, path)
    timeout = _number(table, "timeout", path)
    policy = _typed(table, "policy", str, path)
    if batch_size is not None and batch_size < 1:
        raise RepositoryError(f"{path}: batching.batch_size must be >= 1, got {batch_size}")
    if timeout is not None and timeout <= 0:
        raise RepositoryError(f"{path}: batching.timeout must be > 0 seconds, got {timeout:g}")
    if policy is not None and policy not in BATCH_POLICIES:
        raise RepositoryError(f"{path}: batching.policy must be one of {', '.join(BATCH_POLICIES)}, "
                              f"got {policy!r}")
    return BatchingConfig(enabled=_typed(table, "enabled", bool, path), batch_size=batch_size,
                          timeout=timeout, policy=policy)


def _inside(folder: Path, name: str, path: Path) -> Path:
    """``name`` relative to ``folder``, refused when it leaves the folder."""
    candidate = (folder / name).resolve()
    if Path(name).is_absolute() or not candidate.is_relative_to(folder.resolve()):
        raise RepositoryError(f"{path}: weights = {name!r} must be a file inside {folder}; copy it there")
    return candidate
