"""The model repository's layout rules (``common.repository``): pure file reading, no torch."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.repository import (
    IMAGENET_MEAN,
    BatchingConfig,
    RepositoryError,
    queues_of,
    read_labels,
    read_model,
    scan,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def model_folder(root: Path, name: str, *, network: str = "model.pt2",
                 labels: str | None = "cat\ndog\nbird\n", toml: str | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    if network:
        (folder / network).write_bytes(b"not read by the repository")
    if labels is not None:
        (folder / "labels.txt").write_text(labels)
    if toml is not None:
        (folder / "model.toml").write_text(toml)
    return folder


def test_two_files_serve_with_the_documented_defaults(tmp_path: Path) -> None:
    spec = read_model(model_folder(tmp_path, "pets"))
    assert (spec.name, spec.version, spec.format) == ("pets", 1, "export")
    assert spec.labels == ("cat", "dog", "bird")
    assert spec.network_file == tmp_path / "pets" / "model.pt2"
    assert (spec.preprocess.input_size, spec.preprocess.resize_size) == (224, 256)
    assert spec.preprocess.mean == IMAGENET_MEAN and not spec.preprocess_given
    assert spec.batching == BatchingConfig()


def test_model_toml_sets_preprocessing_batching_and_workers(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, "pets", network="model.pt", toml="""
description = "three pets"
workers = 2
[preprocess]
input_size = 96
interpolation = "bicubic"
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[batching]
enabled = true
batch_size = 8
timeout = 0.05
policy = "adaptive"
""")
    spec = read_model(folder)
    assert spec.format == "torchscript" and spec.description == "three pets" and spec.workers == 2
    assert (spec.preprocess.input_size, spec.preprocess.resize_size) == (96, round(96 / 0.875))
    assert spec.preprocess.interpolation == "bicubic" and spec.preprocess.std == (0.25, 0.25, 0.25)
    assert spec.batching == BatchingConfig(True, 8, 0.05, "adaptive")
    assert spec.batching.resolved(False, 4, 2.0, "timeout") == BatchingConfig(True, 8, 0.05, "adaptive")
    assert BatchingConfig().resolved(False, 4, 2.0, "timeout") == BatchingConfig(False, 4, 2.0, "timeout")


def test_an_architecture_with_a_state_dict_inside_its_folder(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, "tuned", network="",
                          toml='architecture = "resnet18"\nweights = "tuned.pth"\n')
    (folder / "tuned.pth").write_bytes(b"x")
    spec = read_model(folder)
    assert (spec.format, spec.architecture, spec.weights) == ("architecture", "resnet18",
                                                              (folder / "tuned.pth").resolve())


def test_the_highest_version_serves_with_the_model_folders_files(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, "pets", network="", toml="[preprocess]\ninput_size = 64\n")
    for version in (1, 3, 20):
        (folder / str(version)).mkdir()
        (folder / str(version) / "model.pt2").write_bytes(b"x")
    (folder / "20" / "labels.txt").write_text("a\nb\n")
    spec = read_model(folder)
    assert (spec.version, spec.folder, spec.labels) == (20, folder / "20", ("a", "b"))
    assert spec.preprocess.input_size == 64  # the model folder's model.toml


@pytest.mark.parametrize(("files", "toml", "labels", "message"), [
    ({}, None, "a\n", "exactly one network"),
    ({"model.pt2": b"x", "model.pt": b"x"}, None, "a\n", "found model.pt2, model.pt"),
    ({"model.pt2": b"x"}, None, None, "labels.txt is missing"),
    ({"model.pt2": b"x"}, None, "a\n\nb\n", "line 2 is blank"),
    ({"model.pt2": b"x"}, "[preprocess\n", "a\n", "not valid TOML"),
    ({"model.pt2": b"x"}, "batch_size = 4\n", "a\n", "unknown key batch_size"),
    ({"model.pt2": b"x"}, "[batching]\npolicy = \"fast\"\n", "a\n", "batching.policy must be one of"),
    ({"model.pt2": b"x"}, "[preprocess]\ninput_size = 300\nresize_size = 256\n", "a\n",
     "input_size <= resize_size"),
    ({"model.pt2": b"x"}, "[preprocess]\nmean = [0.5]\n", "a\n", "3 numbers"),
    ({}, "architecture = \"resnet18\"\nweights = \"../../etc/passwd\"\n", "a\n", "must be a file inside"),
    ({}, "architecture = \"resnet18\"\nweights = \"missing.pth\"\n", "a\n", "is not a file"),
    ({"model.pt2": b"x"}, "weights = \"w.pth\"\n", "a\n", "goes with architecture"),
    ({"model.pt2": b"x"}, "workers = 0\n", "a\n", "workers must be >= 1"),
    ({"model.pt2": b"x"}, "[batching]\ntimeout = -inf\n", "a\n", "batching.timeout must be a number"),
    ({"model.pt2": b"x"}, "[batching]\nbatch_size = true\n", "a\n", "batch_size must be a int"),
])
def test_a_folder_that_cannot_serve_says_which_file_and_why(
        tmp_path: Path, files: dict[str, bytes], toml: str | None, labels: str | None, message: str) -> None:
    folder = model_folder(tmp_path, "bad", network="", labels=labels, toml=toml)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with pytest.raises(RepositoryError, match=message) as caught:
        read_model(folder)
    assert str(folder) in str(caught.value)


def test_scan_keeps_good_models_beside_broken_ones(tmp_path: Path) -> None:
    model_folder(tmp_path, "good")
    model_folder(tmp_path, "broken", labels=None)
    model_folder(tmp_path, "bad name!")
    model_folder(tmp_path, "async")
    model_folder(tmp_path, ".hidden")
    repository = scan(tmp_path)
    assert list(repository.models) == ["good"]
    assert sorted(repository.broken) == ["async", "bad name!", "broken"]
    assert "labels.txt is missing" in repository.broken["broken"].reason
    assert "rename it" in repository.broken["bad name!"].reason
    assert repository.names() == ["async", "bad name!", "broken", "good"]
    assert repository.default_name(None) is None and repository.default_name("good") == "good"
    with pytest.raises(RepositoryError, match="MODEL_REPOSITORY=.*missing is not a folder"):
        scan(tmp_path / "missing")


def test_the_default_model_keeps_the_base_queue_and_labels_may_end_without_a_newline(tmp_path: Path) -> None:
    assert queues_of("lite", "lite", "inference") == ("inference", "inference.async")
    assert queues_of("pets", "lite", "inference") == ("inference.pets", "inference.pets.async")
    (tmp_path / "labels.txt").write_text("a\r\nb")
    assert read_labels(tmp_path / "labels.txt") == ("a", "b")


def test_the_bundled_repository_serves_the_default_model_as_today() -> None:
    repository = scan(ROOT / "models")
    spec = repository.models["efficientnet_lite0"]
    assert not repository.broken and spec.format == "architecture" and spec.num_labels == 1000
    assert (spec.preprocess.input_size, spec.preprocess.resize_size, spec.preprocess.interpolation,
            spec.preprocess.mean) == (224, 224, "bicubic", (0.5, 0.5, 0.5))

