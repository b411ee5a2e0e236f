"""Locust scenarios for POST /predict, run from this folder as the guide does; no project imports.

Users are closed loop (``constant(0)``): users = requests in flight, what the batching worker sees;
think time would cut the offered load by a latency-dependent amount.
"""

from __future__ import annotations

import csv
import functools
import json
import mimetypes
import random
from pathlib import Path
from typing import Any, NamedTuple

import gevent
from locust import FastHttpUser, constant, events, task
from urllib3 import encode_multipart_formdata

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"


class Photo(NamedTuple):
    """One upload, as urllib3 takes a file field."""
    name: str
    data: bytes
    content_type: str


@functools.cache
def load_corpus(directory: Path = CORPUS_DIR) -> list[Photo]:
    """Every image file in ``directory``, by name; read once, for every user."""
    types = {path: mimetypes.guess_type(path.name)[0] or "" for path in sorted(directory.iterdir())}
    photos = [Photo(p.name, p.read_bytes(), kind) for p, kind in types.items() if kind.startswith("image/")]
    if not photos:
        raise ValueError(f"no photos in corpus folder {directory}: run python -m loadtest.make_corpus")
    return photos


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
        self._rows: dict[int, tuple[int, float]] = {}

    def record(self, payload: dict[str, Any]) -> None:
        try:
            size = int(payload["batch_size"])
        except (KeyError, TypeError, ValueError):
            return
        requests, ms = self._rows.get(size, (0, 0.0))
        self._rows[size] = (requests + 1, ms + float((payload.get("timings_ms") or {}).get("inference") or 0))

    def reset(self, **_kwargs: Any) -> None:
        self._rows = {}

    def rows(self) -> list[tuple[int, int, float]]:
        return [(size, *row) for size, row in sorted(self._rows.items())]

    def write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows([("batch_size", "requests", "inference_ms_sum"), *self.rows()])


BATCH_STATS = BatchStats()


def retry_after(header: str | None) -> float:
    """A 503's ``Retry-After`` in seconds (delay-seconds form; 1 when absent or unreadable)."""
    return float(header) if header and header.isdigit() else 1.0


class PhotoUploader(FastHttpUser):
    """A random corpus photo per request, the server's default top_k (the comparison's scenario)."""
    wait_time = constant(0)  #: closed loop (see the module docstring)

    def on_start(self) -> None:
        directory = getattr(self.environment.parsed_options, "corpus_dir", None)
        self.photos = load_corpus(Path(directory) if directory else CORPUS_DIR)

    @task
    def upload_photo(self) -> None:
        body, content_type = encode_multipart_formdata({"file": random.choice(self.photos)})
        # geventhttpclient sends a bytes body as is; locust's annotation only lists str and dict.
        with self.client.post("/predict", data=body, headers={"Content-Type": content_type},  # type: ignore[arg-type]
                              catch_response=True) as response:
            payload, reason = check_answer(response.status_code, response.content)
            if reason:
                response.failure(reason)
            else:  # a success by itself: a 200 without an exception
                BATCH_STATS.record(payload or {})
        if response.status_code == 503:  # as a client that reads the refusal: wait as told, not spin
            gevent.sleep(retry_after(response.headers.get("Retry-After")))


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
