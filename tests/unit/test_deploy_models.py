"""deploy/models.py: the worker groups `make up` runs, their compose override, the programs' env."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from deploy import models
from deploy.stack import ROOT
from tests.support.tiny_models import write_folder


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
    monkeypatch.setenv("WORKER_METRICS_PORT", "9900")
    summary = models.summary("local", models.plan())
    assert "zoo (2 worker(s)), efficientnet_lite0 (2 worker(s)), pets (3 worker(s))" in summary
    assert "http://localhost:9900/metrics .. :9906/metrics (worker-0 .. worker-6)" in summary


def test_without_a_repository_one_group_serves_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_REPOSITORY", str(tmp_path / "none"))
    assert models.plan() == [models.WorkerGroup("worker", None, 1, 0)]


def test_the_compose_override_adds_a_service_per_other_model(
        repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run" / "compose.models.yaml"
    assert models.main(["compose", str(out)]) == 0
    assert capsys.readouterr().out == "1\n"  # the default model's workers: up.sh scales worker-extra
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
    services = models.compose_override(models.plan(), {"MODEL_REPOSITORY": "models"})["services"]
    assert isinstance(services, dict) and "web" not in services and "volumes" not in services["worker"]


def test_the_stack_env_writes_the_defaults_out_and_loads_in_bash(tmp_path: Path) -> None:
    text = models.stack_env({"BATCH_SIZE": "8", "API_KEYS": "a b'c", "TEST_REDIS_URL": "redis://x/15",
                             "OMP_NUM_THREADS": "2"})
    lines = text.splitlines()
    assert lines[0].startswith("unset ") and " BATCH_SIZE " in lines[0] and "TEST_" not in lines[0]
    assert {"export BATCH_SIZE=8", "export WEB_PORT=8000", "export OMP_NUM_THREADS=2"} <= set(lines)
    assert not any(line.startswith(("export TEST_", "export MODEL=")) for line in lines)  # unset stays unset
    (tmp_path / "stack.env").write_text(text)
    script = 'BATCH_SIZE=1 MODEL=x; . "$0"; echo "$API_KEYS|$BATCH_SIZE|${MODEL-}"'
    loaded = subprocess.run(["bash", "-c", script, tmp_path / "stack.env"], capture_output=True, text=True,
                            check=True)
    assert loaded.stdout == "a b'c|8|\n"


def test_the_scripts_defaults_come_from_common_config(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TAIL", "7")
    monkeypatch.setenv("STACK", "")
    monkeypatch.delenv("RUN_DIR", raising=False)
    assert models.main(["defaults", "TAIL", "STACK", "RUN_DIR"]) == 0
    assert capsys.readouterr().out == "export TAIL=7\nexport STACK=auto\nexport RUN_DIR=run\n"
    monkeypatch.setenv("USE_BATCH_PROCESSING", "maybe")
    assert models.main(["mode"]) == 2 and "USE_BATCH_PROCESSING='maybe' is invalid" in capsys.readouterr().err
