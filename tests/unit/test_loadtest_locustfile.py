"""loadtest/locustfile.py: corpus, multipart bodies, answer checks, the batch tally, and real runs of
locust against a stub server in this process (imported with LOCUST_SKIP_MONKEY_PATCH: no gevent here)."""

from __future__ import annotations

import csv
import importlib
import io
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from werkzeug.formparser import parse_form_data

from loadtest.results import read_batches, read_locust_stats

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "loadtest" / "locustfile.py"


@pytest.fixture(scope="module")
def lf() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCUST_SKIP_MONKEY_PATCH", "1")
        module = importlib.import_module("loadtest.locustfile")
    yield module


def good(batch_size: int = 4) -> bytes:
    return json.dumps({"task_id": "t", "prediction": "tabby", "score": 0.9, "batch_size": batch_size,
                       "predictions": [{"class_id": 281, "label": "tabby", "score": 0.9}],
                       "timings_ms": {"queue": 2.0, "inference": 40.0, "total": 50.0}}).encode()


def parse(body: bytes, content_type: str) -> tuple[Any, Any]:
    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body)}
    _, form, files = parse_form_data(environ)
    return form, files


def test_corpus_loads_from_the_manifest_and_an_empty_one_is_refused(lf: ModuleType, tmp_path: Path) -> None:
    photos = lf.load_corpus()
    manifest = json.loads((ROOT / "loadtest" / "corpus" / "MANIFEST.json").read_text())
    assert [p.name for p in photos] == [f["name"] for f in manifest["files"]]
    assert {p.content_type for p in photos} == {"image/jpeg", "image/png"}
    with pytest.raises(ValueError, match="no photos"):
        lf.load_corpus(tmp_path)


def test_multipart_body_parses_as_a_form(lf: ModuleType) -> None:
    photo = lf.Photo("cat.jpg", b"\xff\xd8\xff" + bytes(range(256)) * 4, "image/jpeg")
    form, files = parse(*lf.encode_multipart(photo))
    upload = files["file"]
    assert not form
    assert (upload.filename, upload.mimetype, upload.read()) == ("cat.jpg", "image/jpeg", photo.data)


@pytest.mark.parametrize(("status", "body", "reason"), [
    (200, good(), None), (200, b'{"task_id": "t"}', "200 without prediction"),
    (200, b"<html>", "200 without a JSON object"), (500, b"oops", "HTTP 500"), (0, None, "HTTP 0"),
    (504, b'{"error": {"code": "timeout", "message": "no result"}}', "HTTP 504 timeout")])
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
    assert [(r.batch_size, r.requests, r.inference_ms_sum) for r in read_batches(tmp_path / "b.csv")] == [
        (1, 1, 30.0), (2, 2, 50.0), (4, 4, 320.0)]
    stats.reset()
    assert stats.rows() == []


class _Stub(BaseHTTPRequestHandler):
    """Answers POST /predict in a fixed rotation: 3 good, 1 without prediction, 1 HTTP 503."""

    count = 0
    lock = threading.Lock()
    seen: list[tuple[str, str]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        form, files = parse(self.rfile.read(int(self.headers["Content-Length"])),
                            self.headers["Content-Type"])
        with _Stub.lock:
            _Stub.count += 1
            upload = files.get("file")
            _Stub.seen.append((upload.mimetype if upload else "", form.get("top_k", "")))
            status, payload = {4: (200, b'{"task_id": "t"}'),
                               0: (503, b'{"error": {"code": "broker_unavailable"}}'),
                               }.get(_Stub.count % 5, (200, good(4)))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture
def stub_server() -> Iterator[str]:
    _Stub.count, _Stub.seen = 0, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_locust(host: str, prefix: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "locust", "-f", "locustfile.py", "--host", host, "--headless",
           "--users", "2", "--spawn-rate", "2", "--run-time", "2s", "--only-summary", "--csv", str(prefix)]
    # From the loadtest folder, as the guide runs it: the locustfile must find its corpus by itself.
    return subprocess.run(cmd, cwd=LOCUSTFILE.parent, capture_output=True, text=True, timeout=60)


def test_real_run_marks_bad_answers_failed_and_writes_the_tally(stub_server: str, tmp_path: Path) -> None:
    proc = run_locust(stub_server, tmp_path / "x")
    assert proc.returncode == 1, proc.stderr  # locust's exit code when any request failed
    stats = read_locust_stats(tmp_path / "x_final_stats.csv")
    # Two in five answers are bad; a request cut off when the run ended reached the stub but not the stats.
    assert 10 < stats.requests <= _Stub.count <= stats.requests + 2
    assert abs(stats.failures - 0.4 * stats.requests) <= 2
    with open(tmp_path / "x_failures.csv", newline="") as fh:
        errors = {row["Error"] for row in csv.DictReader(fh)}
    assert errors == {"CatchResponseError('200 without prediction')",
                      "CatchResponseError('HTTP 503 broker_unavailable')"}
    tally = read_batches(tmp_path / "x_batches.csv")
    assert [(r.batch_size, r.requests) for r in tally] == [(4, stats.requests - stats.failures)]
    # the default scenario only: PhotoUploader, real image types, no top_k
    with open(tmp_path / "x_final_stats.csv", newline="") as fh:
        assert {row["Name"] for row in csv.DictReader(fh)} == {"/predict", "Aggregated"}
    assert {s for s in _Stub.seen} <= {("image/jpeg", ""), ("image/png", "")}

