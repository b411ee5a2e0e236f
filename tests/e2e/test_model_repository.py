"""Users' own models from a repository folder, side by side on the stack ``make up`` starts: the
scripts themselves (``deploy/up.sh``, ``deploy/reload.sh``, ``deploy/down.sh``) running
supervisord, a worker program per model, gunicorn and Flower, on a private RUN_DIR, ports and
queue.

The repository holds each format (a ``torch.export`` program in version folders, a TorchScript
file in batch mode by its model.toml, a torchvision architecture with a 3-class state dict), a
folder that cannot serve and a model whose labels do not match its outputs. The rolling reload
runs last: it moves ``colours`` to version 2.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from common.repository import read_model
from deploy.stack import ROOT, free_port, wait_until
from tests.e2e.test_api import get, upload
from tests.support.tiny_models import (
    PREPROCESS_TOML,
    write_export,
    write_folder,
    write_script,
    write_state_dict,
)
from workers.preprocess import Preprocessor, decode_image

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

RED, BLUE = (255, 0, 0), (0, 0, 255)


@dataclass
class RepoStack:
    url: str
    env: dict[str, str]
    repository: Path
    tuned: torch.nn.Module

    def run(self, script: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ROOT / "deploy" / script), *args], env=self.env, capture_output=True,
                              text=True, timeout=300, check=False)

    def ctl(self, *args: str) -> str:
        done = subprocess.run([str(Path(sys.executable).parent / "supervisorctl"), "-c",
                               str(ROOT / "deploy" / "supervisord.conf"), *args], env=self.env,
                              capture_output=True, text=True, timeout=60, check=True)
        return done.stdout.strip()

    def log(self, process: str) -> str:
        return (Path(self.env["RUN_DIR"]) / "logs" / f"{process}.log").read_text(errors="replace")


def solid(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, "PNG")
    return buffer.getvalue()


def build_repository(root: Path) -> torch.nn.Module:
    write_folder(root / "colours")  # labels.txt and model.toml for every version
    (root / "colours" / "1").mkdir()
    write_export(root / "colours" / "1")
    write_script(write_folder(root / "scripted", toml=PREPROCESS_TOML + "[batching]\nenabled = true\n"
                                                      "batch_size = 4\ntimeout = 0.05\n"))
    tuned = write_state_dict(write_folder(root / "tuned", labels=("ant", "bee", "wasp"),
                                          toml='architecture = "resnet18"\nweights = "weights.pth"\n'
                                               + PREPROCESS_TOML))
    write_folder(root / "broken", toml="[preprocess\n")
    write_export(write_folder(root / "mismatch", labels=("one", "two")))
    return tuned


@pytest.fixture(scope="module")
def repo_stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RepoStack]:
    root = tmp_path_factory.mktemp("models")
    tuned = build_repository(root)
    port = free_port()
    env = {**os.environ, "STACK": "local", "RUN_DIR": str(tmp_path_factory.mktemp("run")),
           "VENV_BIN": str(Path(sys.executable).parent), "REDIS_URL": redis_url, "WEB_PORT": str(port),
           "FLOWER_PORT": str(free_port()), "WORKER_METRICS_PORT": "0", "MODEL_REPOSITORY": str(root),
           "DEFAULT_MODEL": "colours", "CELERY_QUEUE": "repo-e2e", "READY_TIMEOUT": "240"}
    stack = RepoStack(f"http://127.0.0.1:{port}", env, root, tuned)
    try:
        up = stack.run("up.sh")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        # Every servable model has its worker (the default one's made /readyz answer 200).
        wait_until(lambda: None if all(models_by_name(stack.url)[name]["ready"] for name in
                                       ("scripted", "tuned")) else "loading", 120, interval=0.5)
        yield stack
    finally:
        down = stack.run("down.sh")
        assert down.returncode == 0, down.stdout + down.stderr


def models_by_name(url: str) -> dict[str, dict[str, Any]]:
    status, listing = get(url + "/models")
    assert status == 200, listing
    return {model["name"]: model for model in listing["models"]}


@pytest.mark.parametrize(("colour", "label"), [(RED, "red"), ((0, 255, 0), "green"), (BLUE, "blue")])
@pytest.mark.parametrize(("path", "model", "mode"), [("/predict", "colours", "individual"),
                                                     ("/models/colours/predict", "colours", "individual"),
                                                     ("/models/scripted/predict", "scripted", "batch")])
def test_export_and_torchscript_models_answer_with_their_own_labels(
        repo_stack: RepoStack, path: str, model: str, mode: str, colour: tuple[int, int, int],
        label: str) -> None:
    status, body = upload(repo_stack.url + path, solid(colour), filename="x.png")
    assert status == 200, body
    assert (body["model"], body["version"], body["mode"], body["prediction"]) == (model, "1", mode, label)
    assert [p["label"] for p in body["predictions"]][0] == label and len(body["predictions"]) == 3


def test_a_fine_tuned_architecture_answers_as_its_eager_model(repo_stack: RepoStack) -> None:
    image = solid((200, 120, 30))
    spec = read_model(repo_stack.repository / "tuned")
    pixels = Preprocessor(spec.preprocess)(decode_image(image, 10**6))
    with torch.no_grad():
        expected = repo_stack.tuned(pixels.unsqueeze(0)).softmax(-1)[0]
    status, body = upload(repo_stack.url + "/models/tuned/predict", image, filename="x.png", top_k="3")
    assert status == 200, body
    assert body["model"] == "tuned" and body["prediction"] == ("ant", "bee", "wasp")[int(expected.argmax())]
    assert body["score"] == pytest.approx(float(expected.max()), abs=1e-3)


def test_two_models_answer_concurrently(repo_stack: RepoStack) -> None:
    jobs = [("colours", RED, "red"), ("scripted", BLUE, "blue")] * 6
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(
            lambda job: upload(f"{repo_stack.url}/models/{job[0]}/predict", solid(job[1]), filename="x.png"),
            jobs))
    assert [(status, body["model"], body["prediction"]) for status, body in answers] == [
        (200, model, label) for model, _, label in jobs]


def test_make_up_runs_a_worker_program_per_model(repo_stack: RepoStack) -> None:
    by_name = models_by_name(repo_stack.url)
    assert {name: by_name[name].get("workers") for name in ("colours", "scripted", "tuned")} == {
        "colours": 1, "scripted": 1, "tuned": 1}
    # Numbered on across the programs, in name order after the default model's.
    status = repo_stack.run("status.sh").stdout
    for process in ("worker:worker-0", "model-broken:model-broken-1", "model-mismatch:model-mismatch-2",
                    "model-scripted:model-scripted-3", "model-tuned:model-tuned-4"):
        assert process in status, status


def test_a_broken_model_costs_only_itself(repo_stack: RepoStack) -> None:
    url = repo_stack.url
    broken = models_by_name(url)["broken"]
    assert not broken["ready"] and "model.toml is not valid TOML" in broken["reason"]
    status, body = upload(url + "/models/broken/predict", solid((0, 0, 0)), filename="x.png")
    assert status == 503 and body["error"]["code"] == "model_unavailable"
    assert upload(url + "/models/nobody/predict", solid((0, 0, 0)))[0] == 404
    # The labels count is checked where the network is loaded: that worker stops, naming both
    # files, and says so where GET /models reads it; a client that waits is refused at once.
    wait_until(lambda: None if "failed to load" in models_by_name(url)["mismatch"].get("reason", "")
               else "not yet", 60, interval=0.5)
    reason = models_by_name(url)["mismatch"]["reason"]
    labels = repo_stack.repository / "mismatch" / "labels.txt"
    assert "its workers failed to load it" in reason and "3 outputs" in reason and "2 labels" in reason
    assert str(labels) in repo_stack.log("model-mismatch-2")
    status, body = upload(url + "/models/mismatch/predict", solid((0, 0, 0)), filename="x.png")
    assert status == 503 and body["error"]["code"] == "model_unavailable"
    assert "2 labels" in body["error"]["message"]
    assert upload(url + "/predict", solid(RED))[1]["prediction"] == "red"
    assert get(url + "/v2/models/colours/ready") == (200, {"name": "colours", "ready": True})
    assert get(url + "/v2/models/broken/ready")[0] == 503
    status, ready = get(url + "/readyz")
    assert (status, ready["models_without_workers"]) == (200, ["broken", "mismatch"])


def _load(url: str, stop: threading.Event, answers: list[tuple[int, dict[str, Any]]]) -> None:
    while not stop.is_set():
        answers.append(upload(url, solid(RED), filename="x.png"))


def test_a_rolling_reload_under_load_loses_nothing_and_touches_no_other_model(repo_stack: RepoStack) -> None:
    scripted_pid = repo_stack.ctl("pid", "model-scripted:model-scripted-3")
    (repo_stack.repository / "colours" / "2").mkdir()
    write_export(repo_stack.repository / "colours" / "2")  # the new version, the same network
    stop = threading.Event()
    answers: dict[str, list[tuple[int, dict[str, Any]]]] = {"/predict": [], "/models/scripted/predict": []}
    threads = [threading.Thread(target=_load, args=(repo_stack.url + path, stop, answers[path]))
               for path in answers for _ in range(3)]
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
    assert all(body["prediction"] == "red" for _, body in colours + scripted)
    versions = [body["version"] for _, body in colours]
    assert versions[0] == "1" and versions[-1] == "2" and set(versions) == {"1", "2"}
    assert {body["version"] for _, body in scripted} == {"1"}
    assert repo_stack.ctl("pid", "model-scripted:model-scripted-3") == scripted_pid
    status, body = upload(repo_stack.url + "/predict", solid(RED), filename="x.png")
    assert (status, body["version"]) == (200, "2")
