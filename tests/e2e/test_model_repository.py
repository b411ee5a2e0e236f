"""Users' own models from a repository folder, side by side on the stack ``make up`` starts (its
scripts, on a private RUN_DIR, ports and queue): a ``torch.export`` program in version folders, a
TorchScript file batched by its model.toml (loading an architecture: test_workers_formats.py), a
folder that cannot serve and a model whose labels do not match its outputs. The rolling reload runs
last: it moves ``colours`` to version 2.
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

from deploy.stack import ROOT, free_port, wait_until
from tests.e2e.test_api import fetch, upload
from tests.support import tiny_models as tiny
from tests.support.images import make_image

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

RED, BLUE = (255, 0, 0), (0, 0, 255)
Answer = tuple[int, dict[str, Any]]


@dataclass
class RepoStack:
    url: str
    env: dict[str, str]
    repository: Path

    def run(self, script: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ROOT / "deploy" / script), *args], env=self.env, capture_output=True,
                              text=True, timeout=300, check=False)

    def pid(self, process: str) -> str:
        return subprocess.run([str(Path(sys.executable).parent / "supervisorctl"), "-c",
                               str(ROOT / "deploy" / "supervisord.conf"), "pid", process], env=self.env,
                              capture_output=True, text=True, timeout=60, check=True).stdout.strip()

    def predict(self, path: str, colour: tuple[int, int, int], **fields: str) -> Answer:
        return upload(self.url + path, make_image(size=(40, 30), colour=colour), filename="x.png", **fields)

    def models(self) -> dict[str, dict[str, Any]]:
        status, listing = fetch(self.url + "/models")
        assert status == 200, listing
        return {model["name"]: model for model in listing["models"]}


@pytest.fixture(scope="module")
def repo_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RepoStack]:
    root = tmp_path_factory.mktemp("models")
    tiny.write_folder(root / "colours")  # labels.txt and model.toml for every version
    (root / "colours" / "1").mkdir()
    tiny.write_export(root / "colours" / "1")
    batched = tiny.PREPROCESS_TOML + "[batching]\nenabled = true\nbatch_size = 4\ntimeout = 0.05\n"
    tiny.write_script(tiny.write_folder(root / "scripted", toml=batched))
    tiny.write_folder(root / "broken", toml="[preprocess\n")
    tiny.write_export(tiny.write_folder(root / "mismatch", labels=("one", "two")))
    port = free_port()
    env = {**os.environ, "STACK": "local", "RUN_DIR": str(tmp_path_factory.mktemp("run")),
           "VENV_BIN": str(Path(sys.executable).parent), "REDIS_URL": redis_url, "WEB_PORT": str(port),
           "FLOWER_PORT": str(free_port()), "WORKER_METRICS_PORT": "0", "MODEL_REPOSITORY": str(root),
           "DEFAULT_MODEL": "colours", "CELERY_QUEUE": "repo-e2e", "READY_TIMEOUT": "240"}
    stack = RepoStack(f"http://127.0.0.1:{port}", env, root)
    try:
        up = stack.run("up.sh")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        assert "colours (1 worker(s)), broken (1 worker(s))" in up.stdout  # the summary it prints
        # Every servable model has its worker (the default one's made /readyz answer 200).
        wait_until(lambda: None if stack.models()["scripted"]["ready"] else "loading", 120, interval=0.5)
        yield stack
    finally:
        down = stack.run("down.sh")
        assert down.returncode == 0, down.stdout + down.stderr


@pytest.mark.parametrize(("colour", "label"), [(RED, "red"), ((0, 255, 0), "green"), (BLUE, "blue")])
@pytest.mark.parametrize(("path", "model", "mode"), [("/predict", "colours", "individual"),
                                                     ("/models/colours/predict", "colours", "individual"),
                                                     ("/models/scripted/predict", "scripted", "batch")])
def test_export_and_torchscript_models_answer_with_their_own_labels(
        repo_stack: RepoStack, path: str, model: str, mode: str, colour: tuple[int, int, int],
        label: str) -> None:
    status, body = repo_stack.predict(path, colour)
    assert status == 200, body
    assert (body["model"], body["version"], body["mode"], body["prediction"]) == (model, "1", mode, label)
    assert [p["label"] for p in body["predictions"]][0] == label and len(body["predictions"]) == 3


def test_make_up_runs_a_worker_program_per_model(repo_stack: RepoStack) -> None:
    by_name = repo_stack.models()
    assert [by_name[name].get("workers") for name in ("colours", "scripted")] == [1, 1]
    # Numbered on across the programs, in name order after the default model's.
    status = repo_stack.run("status.sh").stdout
    for process in ("worker:worker-0", "model-broken:model-broken-1", "model-mismatch:model-mismatch-2",
                    "model-scripted:model-scripted-3"):
        assert process in status, status


def test_a_broken_model_costs_only_itself(repo_stack: RepoStack) -> None:
    url, models = repo_stack.url, repo_stack.models
    assert not models()["broken"]["ready"] and "model.toml is not valid TOML" in models()["broken"]["reason"]
    status, body = repo_stack.predict("/models/broken/predict", (0, 0, 0))
    assert status == 503 and body["error"]["code"] == "model_unavailable"
    assert repo_stack.predict("/models/nobody/predict", (0, 0, 0))[0] == 404
    # The labels count is checked where the network is loaded: that worker stops, naming both
    # files, and says so where GET /models reads it; a client that waits is refused at once.
    wait_until(lambda: None if "failed to load" in models()["mismatch"].get("reason", "") else "not yet", 60,
               interval=0.5)
    reason = models()["mismatch"]["reason"]
    assert "its workers failed to load it" in reason and "3 outputs" in reason and "2 labels" in reason
    log = Path(repo_stack.env["RUN_DIR"]) / "logs" / "model-mismatch-2.log"
    assert str(repo_stack.repository / "mismatch" / "labels.txt") in log.read_text(errors="replace")
    status, body = repo_stack.predict("/models/mismatch/predict", (0, 0, 0))
    assert status == 503 and body["error"]["code"] == "model_unavailable"
    assert "2 labels" in body["error"]["message"]
    assert repo_stack.predict("/predict", RED)[1]["prediction"] == "red"
    assert fetch(url + "/v2/models/colours/ready") == (200, {"name": "colours", "ready": True})
    assert fetch(url + "/v2/models/broken/ready")[0] == 503
    status, ready = fetch(url + "/readyz")
    assert (status, ready["models_without_workers"]) == (200, ["broken", "mismatch"])


def test_a_rolling_reload_under_load_loses_nothing_and_touches_no_other_model(repo_stack: RepoStack) -> None:
    scripted_pid = repo_stack.pid("model-scripted:model-scripted-3")
    (repo_stack.repository / "colours" / "2").mkdir()
    tiny.write_export(repo_stack.repository / "colours" / "2")  # the new version, the same network
    stop = threading.Event()
    answers: dict[str, list[Answer]] = {"/predict": [], "/models/scripted/predict": []}

    def load(path: str) -> None:
        while not stop.is_set():
            answers[path].append(repo_stack.predict(path, RED))

    threads = [threading.Thread(target=load, args=(path,)) for path in answers for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        reload = repo_stack.run("reload.sh", "colours")
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
    assert all(body["prediction"] == "red" for _, body in colours + scripted)  # two models at once
    assert [{body["model"] for _, body in got} for got in (colours, scripted)] == [{"colours"}, {"scripted"}]
    versions = [body["version"] for _, body in colours]
    assert versions[0] == "1" and versions[-1] == "2" and set(versions) == {"1", "2"}
    assert {body["version"] for _, body in scripted} == {"1"}
    assert repo_stack.pid("model-scripted:model-scripted-3") == scripted_pid
    assert repo_stack.predict("/predict", RED)[1]["version"] == "2"
