"""``make up`` on a model repository and ``make reload`` under load: the scripts themselves
(``deploy/up.sh``, ``deploy/reload.sh``, ``deploy/down.sh``) running supervisord, a worker
program per model, gunicorn and Flower, on a private RUN_DIR, ports and queue.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploy.stack import ROOT, free_port
from tests.e2e.test_api import get, upload
from tests.e2e.test_model_repository import models_by_name, solid
from tests.support.tiny_models import PREPROCESS_TOML, write_export, write_folder, write_script

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

RED, BLUE = (255, 0, 0), (0, 0, 255)


@dataclass
class LocalStack:
    url: str
    env: dict[str, str]
    repository: Path

    def run(self, script: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ROOT / "deploy" / script), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, check=False)

    def ctl(self, *args: str) -> str:
        done = subprocess.run([str(Path(sys.executable).parent / "supervisorctl"), "-c",
                               str(ROOT / "deploy" / "supervisord.conf"), *args], env=self.env,
                              capture_output=True, text=True, timeout=60, check=True)
        return done.stdout.strip()


@pytest.fixture(scope="module")
def local_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("models")
    write_folder(root / "colours")  # labels.txt and model.toml for every version
    (root / "colours" / "1").mkdir()
    write_export(root / "colours" / "1")
    write_script(write_folder(root / "scripted", toml=PREPROCESS_TOML + "[batching]\nenabled = true\n"
                                                      "batch_size = 4\ntimeout = 0.05\n"))
    write_folder(root / "broken", toml="[preprocess\n")
    port = free_port()
    env = {**os.environ, "STACK": "local", "RUN_DIR": str(tmp_path_factory.mktemp("run")),
           "VENV_BIN": str(Path(sys.executable).parent), "REDIS_URL": redis_url, "WEB_PORT": str(port),
           "FLOWER_PORT": str(free_port()), "WORKER_METRICS_PORT": "0", "MODEL_REPOSITORY": str(root),
           "DEFAULT_MODEL": "colours", "CELERY_QUEUE": "local-stack", "READY_TIMEOUT": "240"}
    stack = LocalStack(f"http://127.0.0.1:{port}", env, root)
    try:
        up = stack.run("up.sh")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield stack
    finally:
        down = stack.run("down.sh")
        assert down.returncode == 0, down.stdout + down.stderr


def test_make_up_starts_a_worker_program_per_model_and_a_broken_one_costs_only_itself(
        local_stack: LocalStack) -> None:
    status, ready = get(local_stack.url + "/readyz")
    assert (status, ready["models_without_workers"]) == (200, ["broken"])
    by_name = models_by_name(local_stack.url)
    assert [(name, by_name[name]["ready"], by_name[name].get("workers")) for name in sorted(by_name)] == [
        ("broken", False, 0), ("colours", True, 1), ("scripted", True, 1)]
    assert "not valid TOML" in by_name["broken"]["reason"]
    for path, colour, label, mode in (("/predict", RED, "red", "individual"),
                                      ("/models/scripted/predict", BLUE, "blue", "batch")):
        status, body = upload(local_stack.url + path, solid(colour), filename="x.png")
        assert (status, body["prediction"], body["mode"]) == (200, label, mode), body
    # Numbered on across the programs, in name order after the default model's.
    status_lines = local_stack.run("status.sh").stdout
    assert "model-broken:model-broken-1" in status_lines and "model-scripted:model-scripted-2" in status_lines


def _load(url: str, stop: threading.Event, answers: list[tuple[int, dict[str, Any]]]) -> None:
    while not stop.is_set():
        answers.append(upload(url, solid(RED), filename="x.png"))


def test_a_rolling_reload_under_load_loses_nothing_and_touches_no_other_model(
        local_stack: LocalStack) -> None:
    scripted_pid = local_stack.ctl("pid", "model-scripted:model-scripted-2")
    (local_stack.repository / "colours" / "2").mkdir()
    write_export(local_stack.repository / "colours" / "2")  # the new version, the same network
    stop = threading.Event()
    answers: dict[str, list[tuple[int, dict[str, Any]]]] = {"/predict": [], "/models/scripted/predict": []}
    threads = [threading.Thread(target=_load, args=(local_stack.url + path, stop, answers[path]))
               for path in answers for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        reload = local_stack.run("reload.sh", "colours")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert reload.returncode == 0, reload.stdout + reload.stderr
    assert "colours reloaded: 1 worker(s) on version 2" in reload.stdout
    colours, scripted = answers["/predict"], answers["/models/scripted/predict"]
    assert len(colours) > 20 and len(scripted) > 20
    assert [status for status, _ in colours + scripted] == [200] * len(colours + scripted), [
        body for status, body in colours + scripted if status != 200][:3]
    assert all(body["prediction"] == "red" for _, body in colours + scripted)
    versions = [body["version"] for _, body in colours]
    assert versions[0] == "1" and versions[-1] == "2" and set(versions) == {"1", "2"}
    assert {body["version"] for _, body in scripted} == {"1"}
    assert local_stack.ctl("pid", "model-scripted:model-scripted-2") == scripted_pid
    status, body = upload(local_stack.url + "/predict", solid(RED), filename="x.png")
    assert (status, body["version"]) == (200, "2")
