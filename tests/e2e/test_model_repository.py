"""Users' own models from a repository folder, side by side on one stack: real Redis, one
worker process per model, gunicorn over HTTP.

The repository holds each format (a ``torch.export`` program, a TorchScript file, a
torchvision architecture with a 3-class state dict), one model in batch mode by its
model.toml, a folder that cannot serve and a model whose labels do not match its outputs.
"""
from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from common.contract import PING_TASK
from common.repository import read_model
from deploy.stack import command, wait_until
from tests.e2e.test_api import get, upload
from tests.support.brokers import client_for
from tests.support.stack import start_web
from tests.support.tiny_models import (
    PREPROCESS_TOML,
    write_export,
    write_folder,
    write_script,
    write_state_dict,
)
from tests.support.worker import WorkerProcess
from workers.preprocess import Preprocessor, decode_image

pytestmark = pytest.mark.e2e

#: A queue prefix of its own: the package's stacks consume ``inference``.
QUEUE = "repo-e2e"
SERVED = ("colours", "scripted", "tuned")


@dataclass
class RepoStack:
    url: str
    repository: Path
    workers: dict[str, WorkerProcess]
    tuned: torch.nn.Module


def solid(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), colour).save(buffer, "PNG")
    return buffer.getvalue()


def build_repository(root: Path) -> torch.nn.Module:
    write_export(write_folder(root / "colours"))
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
    root = tmp_path_factory.mktemp("repository")
    tuned = build_repository(root)
    env = {"MODEL_REPOSITORY": str(root), "DEFAULT_MODEL": "colours", "CELERY_QUEUE": QUEUE}
    with ExitStack() as stack:
        workers = {name: stack.enter_context(WorkerProcess(command("worker")[1:], redis_url, MODEL=name,
                                                           **env))
                   for name in (*SERVED, "mismatch")}
        for name in SERVED:
            queue = QUEUE if name == "colours" else f"{QUEUE}.{name}"
            workers[name].wait_ready(client_for(redis_url, redis_url, queue), PING_TASK)
        url, _ = start_web(stack, redis_url, **env)
        yield RepoStack(url, root, workers, tuned)


@pytest.mark.parametrize(("colour", "label"), [((255, 0, 0), "red"), ((0, 255, 0), "green"),
                                               ((0, 0, 255), "blue")])
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
    jobs = [("colours", (255, 0, 0), "red"), ("scripted", (0, 0, 255), "blue")] * 6
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(
            lambda job: upload(f"{repo_stack.url}/models/{job[0]}/predict", solid(job[1]), filename="x.png"),
            jobs))
    assert [(status, body["model"], body["prediction"]) for status, body in answers] == [
        (200, model, label) for model, _, label in jobs]


def models_by_name(url: str) -> dict[str, dict[str, Any]]:
    status, listing = get(url + "/models")
    assert status == 200, listing
    return {model["name"]: model for model in listing["models"]}


def test_a_broken_model_costs_only_itself(repo_stack: RepoStack) -> None:
    by_name = models_by_name(repo_stack.url)
    assert {"colours", "scripted", "tuned"} <= {name for name in by_name if by_name[name]["ready"]}
    assert not by_name["broken"]["ready"] and "model.toml is not valid TOML" in by_name["broken"]["reason"]
    status, body = upload(repo_stack.url + "/models/broken/predict", solid((0, 0, 0)), filename="x.png")
    assert status == 503 and body["error"]["code"] == "model_unavailable"
    assert upload(repo_stack.url + "/models/nobody/predict", solid((0, 0, 0)))[0] == 404
    # The labels count is checked where the network is loaded: that worker stops, naming both files.
    mismatch = repo_stack.workers["mismatch"]
    assert mismatch.wait(timeout=60) == 2
    log = mismatch.log()
    labels = repo_stack.repository / "mismatch" / "labels.txt"
    assert "3 outputs" in log and "2 labels" in log and str(labels) in log, log[-2000:]
    # ... and says so where GET /models reads it; a client that waits is refused at once.
    wait_until(lambda: None if not models_by_name(repo_stack.url)["mismatch"]["ready"] else "ready", 30,
               interval=0.5)
    reason = models_by_name(repo_stack.url)["mismatch"]["reason"]
    assert "its workers failed to load it" in reason and "2 labels" in reason, reason
    status, body = upload(repo_stack.url + "/models/mismatch/predict", solid((0, 0, 0)), filename="x.png")
    assert status == 503 and body["error"]["code"] == "model_unavailable"
    assert "2 labels" in body["error"]["message"]
    assert upload(repo_stack.url + "/predict", solid((255, 0, 0)))[1]["prediction"] == "red"
    assert get(repo_stack.url + "/v2/models/colours/ready") == (200, {"name": "colours", "ready": True})
    assert get(repo_stack.url + "/v2/models/broken/ready")[0] == 503
