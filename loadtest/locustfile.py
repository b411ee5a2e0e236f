"""Locust scenarios for POST /predict, run from this folder as the guide does; no project imports.

Users are closed loop (``constant(0)``): users = requests in flight, what the batching worker sees;
think time would cut the offered load by a latency-dependent amount.
"""

from __future__ import annotations

import csv
import functools
import json
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, events, task

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
_SUFFIX_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


@dataclass(frozen=True)
class Photo:
    """One upload: file name, bytes and MIME type."""
    name: str
    data: bytes
    content_type: str


def load_corpus(directory: Path = CORPUS_DIR) -> list[Photo]:
    """The photos listed in ``MANIFEST.json`` (or every image file when there is none)."""
    manifest = directory / "MANIFEST.json"
    entries: list[dict[str, Any]] = json.loads(manifest.read_text())["files"] if manifest.is_file() else [
        {"name": p.name} for p in sorted(directory.iterdir()) if p.suffix.lower() in _SUFFIX_TYPES]
    photos = [Photo(e["name"], (directory / e["name"]).read_bytes(),
                    e.get("content_type") or _SUFFIX_TYPES[Path(e["name"]).suffix.lower()])
              for e in entries]
    if not photos:
        raise ValueError(f"no photos in corpus folder {directory}: run python -m loadtest.make_corpus")
    return photos


def encode_multipart(photo: Photo) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    part = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{photo.name}"\r\n'
            f"Content-Type: {photo.content_type}\r\n\r\n".encode() + photo.data + b"\r\n")
    return part + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def check_answer(status: int, body: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
    """``(payload, None)`` for a good answer, else ``(payload, reason)``; a reason carries no ids, so
    locust groups equal failures together."""
    try:
        payload = json.loads(body or b"")
    except ValueError:
        payload = None
    payload = payload if isinstance(payload, dict) else None
    if status != 200:
        error = (payload or {}).get("error")
        code = f" {error.get('code', '')}".rstrip() if isinstance(error, dict) else ""
        return payload, f"HTTP {status}{code}"
    if payload is None:
        return None, "200 without a JSON object"
    if not payload.get("prediction"):
        return payload, "200 without prediction"
    return payload, None


class BatchStats:
    """Good answers by ``batch_size``: requests and summed inference ms. No lock: locust's users are
    greenlets of one thread, and ``record`` never yields."""

    def __init__(self) -> None:
        self._rows: dict[int, list[float]] = {}

    def record(self, payload: dict[str, Any]) -> None:
        try:
            size = int(payload["batch_size"])
        except (KeyError, TypeError, ValueError):
            return
        row = self._rows.setdefault(size, [0, 0.0])
        row[0] += 1
        row[1] += float((payload.get("timings_ms") or {}).get("inference") or 0.0)

    def reset(self, **_kwargs: Any) -> None:
        self._rows = {}

    def rows(self) -> list[tuple[int, int, float]]:
        return [(size, int(n), ms) for size, (n, ms) in sorted(self._rows.items())]

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows([("batch_size", "requests", "inference_ms_sum"), *self.rows()])


BATCH_STATS = BatchStats()


@functools.cache
def _corpus(directory: str) -> list[Photo]:
    return load_corpus(Path(directory) if directory else CORPUS_DIR)


class PhotoUploader(FastHttpUser):
    """A random corpus photo per request, the server's default top_k (the comparison's scenario)."""
    wait_time = constant(0)  #: closed loop (see the module docstring)

    def on_start(self) -> None:
        self.photos = _corpus(getattr(self.environment.parsed_options, "corpus_dir", None) or "")
        self.rng = random.Random()

    @task
    def upload_photo(self) -> None:
        photo = self.rng.choice(self.photos)
        body, content_type = encode_multipart(photo)
        # geventhttpclient sends a bytes body as is; locust's annotation only lists str and dict.
        with self.client.post("/predict", data=body, headers={"Content-Type": content_type},  # type: ignore[arg-type]
                              catch_response=True) as response:
            payload, reason = check_answer(response.status_code, response.content)
            if reason:
                response.failure(reason)
                return
            response.success()
            BATCH_STATS.record(payload or {})


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    parser.add_argument("--corpus-dir", default="", env_var="LOADTEST_CORPUS_DIR", help="folder of photos")


@events.init.add_listener
def _on_init(environment: Any, **_kwargs: Any) -> None:
    # --reset-stats drops the ramp-up from locust's stats (on spawning_complete) and from the tally;
    # "quit" fires once every user has stopped, before locust closes its CSV files.
    if environment.reset_stats:
        environment.events.spawning_complete.add_listener(BATCH_STATS.reset)
    environment.events.reset_stats.add_listener(BATCH_STATS.reset)
    environment.events.test_start.add_listener(BATCH_STATS.reset)
    environment.events.quit.add_listener(lambda **_kw: _write_final_files(environment))


def _write_final_files(environment: Any) -> None:
    """``PREFIX_final_stats.csv`` (locust's own ``StatsCSV`` once every user stopped: its
    ``PREFIX_stats.csv`` can miss the last second) and ``PREFIX_batches.csv``, of the same answers."""
    from locust import stats

    if prefix := getattr(environment.parsed_options, "csv_prefix", None):
        with open(f"{prefix}_final_stats.csv", "w", newline="") as fh:
            stats.StatsCSV(environment, stats.PERCENTILES_TO_REPORT).requests_csv(csv.writer(fh))
        BATCH_STATS.write_csv(Path(f"{prefix}_batches.csv"))
