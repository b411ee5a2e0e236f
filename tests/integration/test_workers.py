"""The real worker (`python -m workers`) with the real model, in both modes."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from celery import Celery
from celery.result import AsyncResult
from kombu.utils.uuid import uuid

from common.config import async_queue_of
from common.contract import CLASSIFY_BATCH_TASK, CLASSIFY_TASK, PING_TASK
from common.image_store import ImageStore
from deploy.stack import wait_until
from tests.support.photos import CAT_CLASSES, COFFEE_CLASSES, distinct_photos, encode, photo
from tests.support.worker import ROOT, WorkerProcess, client_app

PHOTOS = distinct_photos(24)


@pytest.fixture(scope="module")
def app(redis_url: str) -> Iterator[Celery]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client_app(redis_url)
    client.flushdb()


@pytest.fixture(scope="module")
def individual(app: Celery, redis_url: str) -> dict[str, list[dict]]:
    """An individual-mode worker's answers: to three synchronous tasks queued after six async ones
    while no worker ran, then to every photo (top_k 5)."""
    later = [app.send_task(CLASSIFY_TASK, (image, 1), queue=async_queue_of(app.conf.task_default_queue))
             for image in PHOTOS[:6]]
    now = [app.send_task(CLASSIFY_TASK, (image, 1)) for image in PHOTOS[6:9]]  # the synchronous queue
    with WorkerProcess(["-m", "workers"], redis_url, WORKER_CONCURRENCY="1"):
        answers = {"now": [r.get(timeout=120) for r in now], "later": [r.get(timeout=120) for r in later]}
        photos = [app.send_task(CLASSIFY_TASK, (image, 5)) for image in PHOTOS]
        return {**answers, "photos": [r.get(timeout=120) for r in photos]}


@pytest.fixture(scope="module")
def batch_worker(app: Celery, redis_url: str) -> Iterator[WorkerProcess]:
    with WorkerProcess(["-m", "workers", "--batch"], redis_url, BATCH_SIZE="4",
                       BATCH_TIMEOUT="0.5") as worker:
        worker.wait_ready(app, PING_TASK)
        yield worker


def test_individual_mode_classifies_real_photos(individual: dict[str, list[dict]]) -> None:
    individual_answers = individual["photos"]
    assert individual_answers[0]["predictions"][0]["class_id"] in CAT_CLASSES  # chelsea
    assert individual_answers[1]["predictions"][0]["class_id"] in COFFEE_CLASSES  # coffee
    assert all(a["mode"] == "individual" and a["batch_size"] == 1 for a in individual_answers)
    assert all(len(a["predictions"]) == 5 for a in individual_answers)


def test_a_waiting_client_is_served_before_queued_async_work(individual: dict[str, list[dict]]) -> None:
    # All three before any async one (taking the queues in turn would interleave them).
    assert max(a["started_at"] for a in individual["now"]) < min(a["started_at"] for a in individual["later"])


def test_concurrent_requests_each_get_their_own_answer_in_real_batches(
        app: Celery, batch_worker: WorkerProcess, individual: dict[str, list[dict]]) -> None:
    with ThreadPoolExecutor(24) as pool:  # 24 clients at once
        sent = list(pool.map(lambda image: app.send_task(CLASSIFY_BATCH_TASK, (image, 5)), PHOTOS))
    answers = [r.get(timeout=120) for r in sent]
    for mine, alone in zip(answers, individual["photos"], strict=True):
        assert mine["mode"] == "batch"
        assert [p["class_id"] for p in mine["predictions"]] == [p["class_id"] for p in alone["predictions"]]
        assert mine["score"] == pytest.approx(alone["score"], abs=1e-3)
    sizes = [a["batch_size"] for a in answers]
    assert max(sizes) == 4 and sum(sizes) / len(sizes) > 2, sizes  # real grouping
    batches = {a["batch_id"] for a in answers}
    assert len(batches) < len(answers)


def test_corrupt_image_fails_alone_in_its_batch(app: Celery, batch_worker: WorkerProcess) -> None:
    cat = encode(photo("chelsea"))
    payloads = [cat, cat[: len(cat) // 3], cat, b"\x89PNG\r\n\x1a\n not really"]
    results = [app.send_task(CLASSIFY_BATCH_TASK, (p, 3)) for p in payloads]
    for result in results:
        result.get(timeout=60, propagate=False)
    assert [r.state for r in results] == ["SUCCESS", "FAILURE", "SUCCESS", "FAILURE"]
    assert results[1].result.__class__.__name__ == "InvalidImageError"
    assert results[0].result["predictions"][0]["class_id"] in CAT_CLASSES


def _send_by_reference(app: Celery, images: ImageStore, task: str, image: bytes | None) -> AsyncResult:
    """As the web app sends on a Redis broker: the image under the task's key, None in the message."""
    task_id = uuid()
    if image is not None:
        images.put(task_id, image, seconds_to_deadline=60)
    return app.send_task(task, (None, 3), task_id=task_id)


@pytest.mark.parametrize("task", [CLASSIFY_TASK, CLASSIFY_BATCH_TASK])
def test_images_stored_beside_the_queue_are_read_then_deleted_and_a_gone_one_fails_alone_as_expired(
        app: Celery, batch_worker: WorkerProcess, redis_url: str, task: str) -> None:
    images = ImageStore(redis.Redis.from_url(redis_url))
    cat = encode(photo("chelsea"))
    gone, *results = (_send_by_reference(app, images, task, image) for image in (None, cat, cat, cat, cat))
    answers = [r.get(timeout=60) for r in results]
    assert all(a["predictions"][0]["class_id"] in CAT_CLASSES for a in answers)
    # Released once each result is stored (just after the client sees it), not left to expire.
    wait_until(lambda: None if all(images.get(r.id) is None for r in results) else "still stored", 10,
               interval=0.02)
    gone.get(timeout=30, propagate=False)
    assert (gone.state, type(gone.result).__name__) == ("FAILURE", "MissingImageError")
    assert "no longer stored" in str(gone.result)
    assert batch_worker.proc is not None and batch_worker.proc.poll() is None


def _publish_raw(app: Celery, task: str, body: object, serializer: str = "json") -> str:
    """Put a message straight into the queue, as a buggy or hostile producer would."""
    task_id = uuid()
    with app.producer_or_acquire() as producer:
        producer.publish(body, routing_key=app.conf.task_default_queue, serializer=serializer,
                         headers={"task": task, "id": task_id, "lang": "py"})
    return task_id


MALFORMED = {"scalar": 42, "dict": {"image": 1}, "short": [["x"], {}], "long": [[], {}, {}, {}],
             "args-scalar": [7, {}, {}], "three-args": [["x", 5, 6], {}, {}],
             "top-k-text": [["x", "5"], {}, {}]}


@pytest.mark.parametrize("task", [CLASSIFY_BATCH_TASK, CLASSIFY_TASK, PING_TASK])
def test_malformed_messages_fail_alone_and_the_worker_keeps_serving(
        app: Celery, batch_worker: WorkerProcess, task: str) -> None:
    ids = {kind: _publish_raw(app, task, body) for kind, body in MALFORMED.items()}
    cat = app.send_task(CLASSIFY_BATCH_TASK, (encode(photo("chelsea")), 3))
    assert cat.get(timeout=60)["predictions"][0]["class_id"] in CAT_CLASSES
    assert batch_worker.proc is not None and batch_worker.proc.poll() is None
    for kind, task_id in ids.items():
        result = AsyncResult(task_id, app=app)
        result.get(timeout=30, propagate=False)
        assert result.state == "FAILURE", (kind, result.state, batch_worker.log()[-2000:])


def test_batch_mode_logs_the_seed_guide_lines(batch_worker: WorkerProcess) -> None:
    messages = [line.split("] ", 1)[-1] for line in batch_worker.log().splitlines()]
    at = messages.index("BATCH PROCESSING MODE ENABLED")
    assert messages[at - 1] == messages[at + 1] == "=" * 60
    assert messages[at + 2] == "Launching ML service with BATCH processing (size=4, timeout=0.5s)..."
    assert any(m.startswith("Batch processed ") and " jobs in " in m and "s per image)" in m
               for m in messages)


@pytest.mark.parametrize(("argv", "size"), [
    (["-m", "workers", "--batch"], "0"), (["-m", "celery", "-A", "workers", "worker", "-P", "solo"], "zero")])
def test_bad_config_fails_fast(argv: list[str], size: str, redis_url: str) -> None:
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"REDIS_URL": redis_url, "PATH": "/usr/bin", "BATCH_SIZE": size})
    assert done.returncode != 0 and (argv[1] == "celery" or done.returncode == 2)  # python -m workers: 2
    assert "BATCH_SIZE" in done.stdout + done.stderr
