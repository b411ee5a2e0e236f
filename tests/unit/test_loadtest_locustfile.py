"""loadtest/locustfile.py: corpus, answer checks, the batch tally, and a real run of locust against a stub
server in this process, which parses its uploads (imported with LOCUST_SKIP_MONKEY_PATCH: no gevent here)."""

from __future__ import annotations

import csv
import importlib
import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from flask import Flask, request
from werkzeug.serving import make_server

from loadtest.results import read_batches, read_locust_stats

LOADTEST = Path(__file__).resolve().parents[2] / "loadtest"


@pytest.fixture(scope="module")
def lf() -> ModuleType:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCUST_SKIP_MONKEY_PATCH", "1")
        return importlib.import_module("loadtest.locustfile")


GOOD = json.dumps({"task_id": "t", "prediction": "tabby", "score": 0.9, "batch_size": 4,
                   "predictions": [{"class_id": 281, "label": "tabby", "score": 0.9}],
                   "timings_ms": {"queue": 2.0, "inference": 40.0, "total": 50.0}}).encode()


def test_corpus_is_the_manifest_s_photos_and_an_empty_one_is_refused(lf: ModuleType, tmp_path: Path) -> None:
    photos = lf.load_corpus()
    manifest = json.loads((LOADTEST / "corpus" / "MANIFEST.json").read_text())
    assert [p.name for p in photos] == sorted(f["name"] for f in manifest["files"])
    assert {p.content_type for p in photos} == {"image/jpeg", "image/png"}
    with pytest.raises(ValueError, match="no photos"):
        lf.load_corpus(tmp_path)


@pytest.mark.parametrize(("status", "body", "reason"), [
    (200, GOOD, None), (200, b'{"task": 1}', "200 without prediction"), (0, None, "HTTP 0"),
    (200, b"<html>", "200 without a JSON object"), (500, b"oops", "HTTP 500"),
    (504, b'{"error": {"code": "timeout"}}', "HTTP 504 timeout")])
def test_check_answer(lf: ModuleType, status: int, body: bytes | None, reason: str | None) -> None:
    assert lf.check_answer(status, body)[1] == reason


def test_batch_stats_tally_and_csv(lf: ModuleType, tmp_path: Path) -> None:
    stats = lf.BatchStats()
    for payload in [{"batch_size": 4, "timings_ms": {"inference": 80.0}}] * 4 + [
            {"batch_size": 1, "timings_ms": {"inference": 30.0}}, {"no": "batch size"},
            {"batch_size": "2", "timings_ms": {"inference": 50.0}}, {"batch_size": 2}]:
        stats.record(payload)
    assert stats.rows() == [(1, 1, 30.0), (2, 2, 50.0), (4, 4, 320.0)]
    stats.write_csv(tmp_path / "b.csv")
    rows = read_batches(tmp_path / "b.csv")
    assert [(r.batch_size, r.requests, r.inference_ms_sum) for r in rows] == stats.rows()
    stats.reset()
    assert stats.rows() == []


@pytest.mark.parametrize(("header", "seconds"), [("3", 3.0), ("0", 0.0), (None, 1.0), ("soon", 1.0),
                                                  ("-2", 1.0)])
def test_a_refused_user_waits_the_retry_after_it_was_given(lf: ModuleType, header: str | None,
                                                          seconds: float) -> None:
    assert lf.retry_after(header) == seconds


#: The stub's answers in rotation: 3 good, 1 without prediction, 1 HTTP 503.
ROTATION = [(503, b'{"error": {"code": "broker_unavailable"}}'), *[(200, GOOD)] * 3, (200, b'{"task": 1}')]
SEEN: list[tuple[str | None, str, bool]] = []  #: per upload: its type, its top_k, whether a corpus photo


@pytest.fixture
def stub_server() -> Iterator[str]:
    app, count = Flask("stub"), itertools.count(1)

    @app.post("/predict")
    def predict() -> tuple[bytes, int, dict[str, str]]:
        upload = request.files["file"]
        same = upload.read() == (LOADTEST / "corpus" / str(upload.filename)).read_bytes()
        SEEN.append((upload.mimetype, request.form.get("top_k", ""), same))
        status, body = ROTATION[next(count) % 5]
        return body, status, {"Content-Type": "application/json", "Retry-After": "0"}  # 0: keep the pace
    SEEN.clear()
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_real_run_marks_bad_answers_failed_and_writes_the_tally(stub_server: str, tmp_path: Path) -> None:
    # From the loadtest folder, as the guide runs it: the locustfile must find its corpus by itself.
    proc = subprocess.run([sys.executable, "-m", "locust", "-f", "locustfile.py", "--host", stub_server,
                           "--headless", "--users", "2", "--spawn-rate", "2", "--run-time", "2s",
                           "--only-summary", "--csv", str(tmp_path / "x")],
                          cwd=LOADTEST, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr  # locust's exit code when any request failed
    stats = read_locust_stats(tmp_path / "x_final_stats.csv")
    # Two in five answers are bad; a request cut off when the run ended reached the stub but not the stats.
    assert 10 < stats.requests <= len(SEEN) <= stats.requests + 2
    assert abs(stats.failures - 0.4 * stats.requests) <= 2
    with open(tmp_path / "x_failures.csv", newline="") as fh:
        errors = {row["Error"] for row in csv.DictReader(fh)}
    assert errors == {f"CatchResponseError('{why}')" for why in ("200 without prediction",
                                                                 "HTTP 503 broker_unavailable")}
    tally = [(r.batch_size, r.requests) for r in read_batches(tmp_path / "x_batches.csv")]
    assert tally == [(4, stats.requests - stats.failures)]
    # the default scenario only: PhotoUploader, a corpus photo as field "file" of its type, no top_k
    with open(tmp_path / "x_final_stats.csv", newline="") as fh:
        assert {row["Name"] for row in csv.DictReader(fh)} == {"/predict", "Aggregated"}
    assert set(SEEN) <= {("image/jpeg", "", True), ("image/png", "", True)}
