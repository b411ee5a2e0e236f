"""The model repository: a folder of model folders, read without torch.

Triton's layout, with PyTorch's formats::

    MODEL_REPOSITORY/
      flowers/                 # the model's name
        labels.txt             # one label per line, in output order
        model.toml             # optional: preprocessing, batching, description, workers
        model.pt2              # a torch.export program (batch dimension dynamic), or
        model.pt               # a TorchScript file, or neither and model.toml names an architecture
        3/ ...                 # optional numbered versions, each a folder like the above: the highest serves

A version folder's files win over the model folder's; a folder that cannot serve is a :class:`BrokenModel`.
"""
from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path
from typing import Any

from common.config import BATCH_POLICIES, async_queue_of

__all__ = ["BUILT_IN_DEFAULT", "EXPORT_FILE", "IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS",
           "LABELS_FILE", "MODEL_NAME", "SCRIPT_FILE", "TOML_FILE", "BatchingConfig", "BrokenModel",
           "ModelSpec", "PreprocessConfig", "Repository", "RepositoryError", "queues_of", "read_labels",
           "read_model", "scan"]

#: The architecture a worker serves when ``MODEL`` is unset and there is no repository folder.
BUILT_IN_DEFAULT = "efficientnet_lite0"
EXPORT_FILE, SCRIPT_FILE, TOML_FILE, LABELS_FILE = "model.pt2", "model.pt", "model.toml", "labels.txt"
#: A model's name: its folder's, as it appears in URLs, queue names and metric labels.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: ``<CELERY_QUEUE>.async`` is the default model's async queue, so no model may be named so.
_RESERVED_NAMES = frozenset({"async"})
INTERPOLATIONS = ("bilinear", "bicubic")  # the resampling filters the preprocessor implements
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: Longest ``labels.txt`` read: more is not a labels file.
_MAX_LABELS_BYTES = 64 * 2**20


class RepositoryError(ValueError):
    """A model folder that cannot serve; the message names the file and the fix."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How a model wants its input: shorter side resized to ``resize_size``, centre crop, normalised."""

    input_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not 0 < self.input_size <= self.resize_size:
            raise ValueError(f"need 0 < input_size <= resize_size, got {self.input_size}, {self.resize_size}")
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
    """A model's batching; None fields take the environment's (:meth:`resolved`)."""

    enabled: bool | None = None
    batch_size: int | None = None
    timeout: float | None = None
    policy: str | None = None

    def resolved(self, enabled: bool, batch_size: int, timeout: float, policy: str) -> BatchingConfig:
        """Every field set: this model's own values, else the ones given."""
        return BatchingConfig(*(mine if mine is not None else given for mine, given in  # type: ignore[arg-type]
                                zip(astuple(self), (enabled, batch_size, timeout, policy), strict=True)))


@dataclass(frozen=True)
class ModelSpec:
    """One servable model version, as its folder describes it."""

    name: str
    version: int
    folder: Path  # the version folder (the model folder when it has no numbered versions)
    format: str  # export (model.pt2), torchscript (model.pt) or architecture (model.toml)
    labels: tuple[str, ...] | None  # each output's, in order; None: a built-in ImageNet model
    labels_file: Path | None
    preprocess: PreprocessConfig
    preprocess_given: bool = False  # model.toml set [preprocess]; else the loader may use the network's own
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    description: str = ""
    architecture: str | None = None  # a torchvision or timm name (architecture format)
    weights: Path | None = None  # its state dict; None: the architecture's own weights
    workers: int | None = None  # worker processes `make up` starts for it; None: WORKERS

    @property
    def network_file(self) -> Path | None:
        """The file the network is read from (the weights for an architecture)."""
        files = {"export": EXPORT_FILE, "torchscript": SCRIPT_FILE}
        return self.folder / files[self.format] if self.format in files else self.weights

    @property
    def num_labels(self) -> int:
        """Outputs the model must have (a built-in ImageNet model's 1000)."""
        return 1000 if self.labels is None else len(self.labels)

    def describe(self) -> dict[str, Any]:
        """What ``GET /models/<name>`` says of it (JSON-ready)."""
        p = self.preprocess
        return {"name": self.name, "version": str(self.version), "format": self.format,
                "description": self.description, "labels": self.num_labels, "input_size": p.input_size,
                "preprocess": {**asdict(p), "mean": list(p.mean), "std": list(p.std)}}


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
        return sorted({*self.models, *self.broken})

    def default_name(self, asked: str | None) -> str | None:
        """``DEFAULT_MODEL``, else the only model, else the built-in default's folder (keeps ``/predict``)."""
        names = self.names()
        if asked or len(names) == 1:
            return asked or names[0]
        return BUILT_IN_DEFAULT if BUILT_IN_DEFAULT in names else None


def queues_of(model: str, default: str | None, base: str) -> tuple[str, str]:
    """Sync and async queues: the default model keeps ``base`` (``CELERY_QUEUE``), others ``base.<model>``."""
    queue = base if model == default else f"{base}.{model}"
    return queue, async_queue_of(queue)


def scan(root: Path | str) -> Repository:
    """Every model folder under ``root`` but hidden and ``_`` ones; one that cannot serve is ``broken``."""
    root = Path(root)
    if not root.is_dir():
        raise RepositoryError(f"MODEL_REPOSITORY={root} is not a folder; point it at one of model folders")
    models: dict[str, ModelSpec] = {}
    broken: dict[str, BrokenModel] = {}
    for folder in sorted(root.iterdir()):
        if folder.is_dir() and not folder.name.startswith((".", "_")):
            try:
                models[folder.name] = read_model(folder)
            except RepositoryError as exc:
                broken[folder.name] = BrokenModel(folder.name, str(exc))
    return Repository(root, models, broken)


def read_model(folder: Path) -> ModelSpec:
    """The servable version of the model in ``folder``; :class:`RepositoryError` if it cannot serve."""
    if not MODEL_NAME.fullmatch(folder.name) or folder.name in _RESERVED_NAMES:
        raise RepositoryError(f"{folder}: a model's folder name is its name in URLs and queues: use letters, "
                              f"digits, '_' and '-' (at most 64, not {sorted(_RESERVED_NAMES)}); rename it")
    versions = sorted((int(child.name), child) for child in folder.iterdir()
                      if child.is_dir() and child.name.isdigit())
    version, where = versions[-1] if versions else (1, folder)
    settings = {**_read_toml(folder / TOML_FILE), **(_read_toml(where / TOML_FILE) if versions else {})}
    toml = where / TOML_FILE if (where / TOML_FILE).is_file() else folder / TOML_FILE
    _table(settings, "", {"description", "architecture", "weights", "workers", "preprocess", "batching"},
           toml)
    files = [f for f in (EXPORT_FILE, SCRIPT_FILE) if (where / f).is_file()]
    architecture = _typed(settings, "architecture", str, toml)
    if len(files) + (architecture is not None) != 1:
        found = ", ".join([*files, *(["architecture in model.toml"] if architecture else [])]) or "nothing"
        raise RepositoryError(f"{where}: a model needs exactly one network: {EXPORT_FILE} (torch.export), "
                              f"{SCRIPT_FILE} (TorchScript) or architecture in {TOML_FILE}; found {found}")
    weights_name = _typed(settings, "weights", str, toml)
    weights = None
    if weights_name is not None:
        weights = (where / weights_name).resolve()
        if architecture is None:
            raise RepositoryError(f"{toml}: weights goes with architecture, not {files[0]}: remove it")
        if Path(weights_name).is_absolute() or not weights.is_relative_to(where.resolve()):
            raise RepositoryError(f"{toml}: weights = {weights_name!r} must be a file inside {where}")
        if not weights.is_file():
            raise RepositoryError(f"{toml}: weights = {weights_name!r}, but {weights} is not a file; copy it")
    workers = _typed(settings, "workers", int, toml)
    if workers is not None and workers < 1:
        raise RepositoryError(f"{toml}: workers must be >= 1, got {workers}")
    (config, given), batching = _preprocess(settings, toml), _batching(settings, toml)
    labels_file = where / LABELS_FILE if (where / LABELS_FILE).is_file() else folder / LABELS_FILE
    return ModelSpec(
        name=folder.name, version=version, folder=where,
        format="architecture" if architecture else ("export" if files[0] == EXPORT_FILE else "torchscript"),
        labels=read_labels(labels_file), labels_file=labels_file, preprocess=config,
        preprocess_given=given, batching=batching, architecture=architecture, weights=weights,
        description=_typed(settings, "description", str, toml) or "", workers=workers)


def read_labels(path: Path) -> tuple[str, ...]:
    """``labels.txt``: one label per line (blank lines at the end ignored); RepositoryError if unusable."""
    if not path.is_file():
        raise RepositoryError(f"{path} is missing: write one label per line, in the model's output order")
    if path.stat().st_size > _MAX_LABELS_BYTES:
        raise RepositoryError(f"{path} is over {_MAX_LABELS_BYTES // 2**20} MiB: is it the labels file?")
    try:
        labels = tuple(line.strip() for line in path.read_text(encoding="utf-8").rstrip("\r\n").splitlines())
    except UnicodeDecodeError as exc:
        raise RepositoryError(f"{path} is not UTF-8 text ({exc}); save it as UTF-8") from None
    if not labels or "" in labels:
        raise RepositoryError(f"{path}: line {labels.index('') + 1} is blank; every output needs a label"
                              if labels else f"{path} holds no labels: write one label per line")
    return labels


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RepositoryError(f"{path} is not valid TOML: {exc}; fix it") from None


def _typed(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    item = table.get(key)
    if item is not None and (not isinstance(item, kind) or isinstance(item, bool) and kind is not bool):
        name = kind.__name__ if isinstance(kind, type) else "number"
        raise RepositoryError(f"{path}: {key} must be a {name}, got {item!r}")
    return item


def _table(settings: Mapping[str, Any], key: str, allowed: set[str], path: Path) -> dict[str, Any]:
    """``settings[key]`` (for "": ``settings``), refused with an unknown key."""
    table, section = (settings.get(key, {}), f"{key}.") if key else (settings, "")
    if not isinstance(table, dict):
        raise RepositoryError(f"{path}: {key} must be a table ([{key}]), got {table!r}")
    if unknown := sorted(set(table) - allowed):
        raise RepositoryError(f"{path}: unknown key{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(section + k for k in unknown)}; known: "
                              f"{', '.join(section + k for k in sorted(allowed))}")
    return table


def _preprocess(settings: Mapping[str, Any], path: Path) -> tuple[PreprocessConfig, bool]:
    table = _table(settings, "preprocess", {"input_size", "resize_size", "interpolation", "mean", "std"},
                   path)
    input_size = _typed(table, "input_size", int, path) or 224
    # Without resize_size, the classic 224/256 ratio (ImageNet's 0.875 crop).
    resize_size = _typed(table, "resize_size", int, path) or round(input_size / 0.875)
    mean, std = (table.get(key, default) for key, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)))
    for key, item in (("mean", mean), ("std", std)):
        if not isinstance(item, (list, tuple)) or len(item) != 3 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in item):
            raise RepositoryError(f"{path}: preprocess.{key} must be 3 numbers (R, G, B), got {item!r}")
    interpolation = _typed(table, "interpolation", str, path) or "bilinear"
    try:
        return PreprocessConfig(input_size, resize_size, interpolation, tuple(map(float, mean)),  # type: ignore[arg-type]
                                tuple(map(float, std))), bool(table)  # type: ignore[arg-type]
    except ValueError as exc:
        raise RepositoryError(f"{path}: [preprocess] {exc}") from None


def _batching(settings: Mapping[str, Any], path: Path) -> BatchingConfig:
    table = _table(settings, "batching", {"enabled", "batch_size", "timeout", "policy"}, path)
    batch_size, policy = _typed(table, "batch_size", int, path), _typed(table, "policy", str, path)
    timeout = _typed(table, "timeout", (int, float), path)
    if batch_size is not None and batch_size < 1:
        raise RepositoryError(f"{path}: batching.batch_size must be >= 1, got {batch_size}")
    if timeout is not None and not 0 < timeout < math.inf:
        raise RepositoryError(f"{path}: batching.timeout must be a number of seconds > 0, got {timeout}")
    if policy is not None and policy not in BATCH_POLICIES:
        raise RepositoryError(f"{path}: batching.policy must be one of {', '.join(BATCH_POLICIES)}, "
                              f"got {policy!r}")
    return BatchingConfig(_typed(table, "enabled", bool, path), batch_size,
                          None if timeout is None else float(timeout), policy)
