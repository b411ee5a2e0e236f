"""Locust scenarios for the image-classification API (POST /predict).

Run it as the batch-processing guide does, from this folder::

    cd loadtest
    locust -f locustfile.py --host=http://localhost:8000 --users 10 --spawn-rate 2 --run-time 60s --headless

``PhotoUploader`` (the default) uploads corpus photos; ``MixedUploader`` (name it) asks for
``top_k=1`` or ``10``. Users are closed loop (``constant(0)``): users = requests in flight, what
the batching worker sees; think time would cut the offered load by a latency-dependent amount.
Non-200 answers, answers without ``prediction`` and (``--check-classes``) answers missing the
photo's ImageNet ids in ``corpus/MANIFEST.json`` fail. With ``--csv PREFIX`` the answers'
``batch_size``/``timings_ms`` tally goes to ``PREFIX_batches.csv``. No project imports.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, events, task

__all__ = ["BATCH_STATS", "BatchStats", "MixedUploader", "Photo", "PhotoUploader", "check_answer",
           "encode_multipart", "load_corpus"]

logger = logging.getLogger(__name__)

#: The bundled corpus (``python -m loadtest.make_corpus``); ``--corpus-dir`` overrides it.
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
#: Scenarios run when the command line names none.
DEFAULT_USER_CLASSES = ("PhotoUploader",)
#: Columns of ``PREFIX_batches.csv``: one row per batch size seen by clients.
BATCH_CSV_COLUMNS = ("batch_size", "requests", "inference_ms_sum", "queue_ms_sum", "total_ms_sum")
_SUFFIX_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


@dataclass(frozen=True)
class Photo:
    """One upload: file name, bytes, MIME type and the class ids a right answer contains."""

    name: str
    data: bytes
    content_type: str
    expected_class_ids: frozenset[int] | None = None


def load_corpus(directory: Path = CORPUS_DIR) -> list[Photo]:
    """Read the photos listed in ``MANIFEST.json`` (or every image file when there is none)."""
    manifest = directory / "MANIFEST.json"
    if manifest.is_file():
        entries = json.loads(manifest.read_text())["files"]
    else:
        entries = [{"name": p.name} for p in sorted(directory.iterdir()) if p.suffix.lower() in _SUFFIX_TYPES]
    photos = [Photo(e["name"], (directory / e["name"]).read_bytes(),
                    e.get("content_type") or _SUFFIX_TYPES[Path(e["name"]).suffix.lower()],
                    frozenset(e["expected_class_ids"]) if e.get("expected_class_ids") else None)
              for e in entries]
    if not photos:
        raise ValueError(f"no photos in corpus folder {directory}: run python -m loadtest.make_corpus")
    return photos


def encode_multipart(photo: Photo, fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """Encode ``photo`` as multipart field ``file`` plus plain ``fields``; return body, Content-Type."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
             for key, value in (fields or {}).items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{photo.name}"\r\n'
                 f"Content-Type: {photo.content_type}\r\n\r\n".encode() + photo.data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def check_answer(status: int, body: bytes | None, photo: Photo,
                 check_classes: bool = False) -> tuple[dict[str, Any] | None, str | None]:
    """``(payload, None)`` for a good answer, else ``(payload or None, reason)``; a reason carries no
    ids, so locust groups equal failures together."""
    try:
        payload = json.loads(body or b"")
    except ValueError:
        payload = None
    if not isinstance(payload, dict):
        payload = None
    if status != 200:
        error = (payload or {}).get("error")
        code = f" {error.get('code', '')}".rstrip() if isinstance(error, dict) else ""
        return payload, f"HTTP {status}{code}"
    if payload is None:
        return None, "200 without a JSON object"
    if not payload.get("prediction"):
        return payload, "200 without prediction"
    if check_classes and photo.expected_class_ids is not None:
        returned = {p.get("class_id") for p in payload.get("predictions") or [] if isinstance(p, dict)}
        if not returned & photo.expected_class_ids:
            return payload, f"wrong classes for {photo.name}"
    return payload, None


class BatchStats:
    """Tally of good answers by ``batch_size``: requests and summed inference, queue and total ms.

    Means per request, per batch (requests / size) and per image (inference / size) follow. No lock:
    locust's users are greenlets of one thread, and ``record`` never yields to another.
    """

    def __init__(self) -> None:
        self._rows: dict[int, list[float]] = {}

    def record(self, payload: dict[str, Any]) -> None:
        """Add one answer (one without a batch_size is ignored)."""
        try:
            size = int(payload["batch_size"])
        except (KeyError, TypeError, ValueError):
            return
        timings = payload.get("timings_ms") or {}
        values = [1.0] + [float(timings.get(k) or 0.0) for k in ("inference", "queue", "total")]
        row = self._rows.setdefault(size, [0.0] * 4)
        row[:] = [a + b for a, b in zip(row, values)]

    def reset(self, **_kwargs: Any) -> None:
        """Forget everything (locust's ``--reset-stats`` after the ramp-up)."""
        self._rows = {}

    def rows(self) -> list[tuple[int, int, float, float, float]]:
        """``BATCH_CSV_COLUMNS`` rows, smallest batch first."""
        return [(size, int(v[0]), v[1], v[2], v[3]) for size, v in sorted(self._rows.items())]

    def summary(self) -> str:
        """One line: answers, mean batch size per batch and per request."""
        rows = self.rows()
        requests = sum(r[1] for r in rows)
        if not requests:
            return "no answers with batch_size"
        per_request = sum(r[0] * r[1] for r in rows) / requests
        per_batch = requests / sum(r[1] / r[0] for r in rows if r[0] > 0)
        return f"{requests} answers, mean batch size {per_batch:.2f} per batch, {per_request:.2f} per request"

    def write_csv(self, path: Path) -> None:
        """Write the tally to ``path``."""
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows([BATCH_CSV_COLUMNS, *self.rows()])


BATCH_STATS = BatchStats()


@functools.cache
def _corpus(directory: str) -> list[Photo]:
    """The photos of ``directory`` (the bundled corpus when empty), read once per process."""
    return load_corpus(Path(directory) if directory else CORPUS_DIR)


class _Uploader(FastHttpUser):
    """Shared upload logic; not a scenario by itself."""

    abstract = True
    wait_time = constant(0)  #: closed loop (see the module docstring)

    def on_start(self) -> None:
        """Load the corpus (--corpus-dir or LOADTEST_CORPUS_DIR); give this user its own random choice."""
        options = self.environment.parsed_options
        self.photos = _corpus(getattr(options, "corpus_dir", None) or "")
        self.check_classes = bool(getattr(options, "check_classes", False))
        self.rng = random.Random()

    def upload(self, top_k: int | None = None) -> None:
        """POST one random corpus photo to /predict and judge the answer."""
        photo = self.rng.choice(self.photos)
        body, content_type = encode_multipart(photo, {"top_k": str(top_k)} if top_k else None)
        name = "/predict" if top_k is None else f"/predict?top_k={top_k}"
        # geventhttpclient sends a bytes body as is; locust's annotation only lists str and dict.
        with self.client.post("/predict", data=body, headers={"Content-Type": content_type},  # type: ignore[arg-type]
                              name=name, catch_response=True) as response:
            payload, reason = check_answer(response.status_code, response.content, photo, self.check_classes)
            if reason:
                response.failure(reason)
                return
            response.success()
            BATCH_STATS.record(payload or {})


class PhotoUploader(_Uploader):
    """Uploads corpus photos with the server's default top_k (the comparison's scenario)."""

    @task
    def upload_photo(self) -> None:
        """One upload, server-default top_k."""
        self.upload()


class MixedUploader(_Uploader):
    """Mostly top_k=1 uploads, some top_k=10; runs only when named on the command line."""

    @task(3)
    def upload_top1(self) -> None:
        """Smallest answer."""
        self.upload(top_k=1)

    @task(1)
    def upload_top10(self) -> None:
        """Larger answer."""
        self.upload(top_k=10)


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    add = parser.add_argument
    add("--check-classes", action="store_true", default=False, env_var="LOADTEST_CHECK_CLASSES",
        help="fail answers whose top-k misses the ImageNet ids in corpus/MANIFEST.json")
    add("--corpus-dir", default="", env_var="LOADTEST_CORPUS_DIR", help="folder of photos to upload")


@events.init.add_listener
def _on_init(environment: Any, **_kwargs: Any) -> None:
    # Without named scenarios locust would run every user class; run the default ones only.
    options = environment.parsed_options
    if options is not None and not options.user_classes:
        environment.user_classes[:] = [c for c in environment.user_classes
                                       if c.__name__ in DEFAULT_USER_CLASSES] or environment.user_classes
    # --reset-stats drops the ramp-up from locust's stats (runners.py, on_spawning_complete) and from
    # the tally; "quit" fires once every user has stopped, before locust closes its CSV files.
    if environment.reset_stats:
        environment.events.spawning_complete.add_listener(BATCH_STATS.reset)
    environment.events.reset_stats.add_listener(BATCH_STATS.reset)
    environment.events.test_start.add_listener(BATCH_STATS.reset)
    environment.events.quit.add_listener(lambda **_kw: _write_final_files(environment))


def _write_final_files(environment: Any) -> None:
    """Write ``PREFIX_final_stats.csv`` (locust's own ``StatsCSV`` once every user stopped: locust's
    ``PREFIX_stats.csv`` can miss the last second) and ``PREFIX_batches.csv``, covering the same answers."""
    from locust import stats

    logger.info("batch sizes seen by clients: %s", BATCH_STATS.summary())
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if prefix:
        with open(f"{prefix}_final_stats.csv", "w", newline="") as fh:
            stats.StatsCSV(environment, stats.PERCENTILES_TO_REPORT).requests_csv(csv.writer(fh))
        BATCH_STATS.write_csv(Path(f"{prefix}_batches.csv"))
