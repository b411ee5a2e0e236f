"""deploy/models.py: the worker groups `make up` runs, and their compose override."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy import models
from deploy.stack import ROOT
from deploy.wait_ready import fatal_programs
from tests.support.tiny_models import write_folder

pytestmark = pytest.mark.unit


@pytest.fixture
def repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, toml in (("efficientnet_lite0", ""), ("pets", "workers = 3\n"), ("zoo", "")):
        (write_folder(tmp_path / name, toml=toml) / "model.pt2").write_bytes(b"")
    monkeypatch.setenv("MODEL_REPOSITORY", str(tmp_path))
    return tmp_path


def test_each_model_its_group_the_default_first(repository: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKERS", "2")
    assert models.plan() == [models.WorkerGroup("worker", "efficientnet_lite0", 2, 0),
                             models.WorkerGroup("model-pets", "pets", 3, 2),
                             models.WorkerGroup("model-zoo", "zoo", 2, 5)]
    monkeypatch.setenv("DEFAULT_MODEL", "zoo")
    assert [(group.program, group.model) for group in models.plan()] == [
        ("worker", "zoo"), ("model-efficientnet_lite0", "efficientnet_lite0"), ("model-pets", "pets")]


def test_without_a_repository_one_group_serves_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_REPOSITORY", str(tmp_path / "none"))
    assert models.plan() == [models.WorkerGroup("worker", None, 1, 0)]


def test_the_compose_override_adds_a_service_per_other_model(repository: Path, tmp_path: Path) -> None:
    out = tmp_path / "run" / "compose.models.yaml"
    assert models.main(["compose", str(out)]) == 0
    services = json.loads(out.read_text())["services"]  # JSON: compose reads it as YAML
    assert sorted(services) == ["model-pets", "model-zoo", "web", "worker", "worker-extra"]
    mount = [f"{repository}:/models:ro"]
    for name in ("web", "worker", "worker-extra"):
        assert services[name]["volumes"] == mount
        assert services[name]["environment"]["MODEL_REPOSITORY"] == "/models"
    assert services["worker"]["environment"]["MODEL"] == "efficientnet_lite0"
    assert services["model-pets"] == {
        "extends": {"file": str(ROOT / "compose.yaml"), "service": "worker-extra"},
        "environment": {"MODEL_REPOSITORY": "/models", "MODEL": "pets", "MODEL_WEIGHTS": ""},
        "deploy": {"replicas": 3}, "volumes": mount}


def test_the_images_own_repository_is_not_mounted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_REPOSITORY", "models")
    services = models.compose_override(models.plan())["services"]
    assert isinstance(services, dict) and "web" not in services and "volumes" not in services["worker"]


def test_another_models_fatal_workers_do_not_stop_the_wait() -> None:
    states = {"web": "RUNNING", "worker-0": "RUNNING", "model-broken-1": "FATAL"}
    assert fatal_programs(lambda: states) is None
    states["worker-0"] = "FATAL"
    assert fatal_programs(lambda: states) == "worker-0 (FATAL) stopped and will not restart; see its log"
    states["worker-0"] = "EXITED"  # exit status 2: it cannot start
    assert fatal_programs(lambda: states) == "worker-0 (EXITED) stopped and will not restart; see its log"
