"""Locust scenarios for the image-classification API (POST /predict).

Run it as the batch-processing guide does, from this folder::

    cd loadtest
    locust -f locustfile.py --host=http://localhost:8000 --users 10 --spawn-rate 2 --run-time 60s --headless

Scenarios (one ``FastHttpUser`` each; name one on the command line to pick it):

* ``PhotoUploader`` (the default when none is named): uploads corpus photos
  with the server's default ``top_k``.
* ``MixedUploader``: the same photos, mostly with ``top_k=1`` (a thin response)
  and sometimes ``top_k=10``.

Both users are *closed loop*: ``wait_time = constant(0)`` sends the next upload
as soon as the previous answer arrives. The number of users is then exactly the
number of requests in flight, which is what the batching worker sees and what
the comparison varies; think time would only lower the offered load by an
amount that depends on latency, making individual and batch runs incomparable.

Every answer is checked: a non-200 status or a body without ``prediction`` is
reported as a failure through ``catch_response``; ``--check-classes`` also
fails answers whose top-k misses the ImageNet ids listed for that photo in
``corpus/MANIFEST.json``. The ``batch_size`` and ``timings_ms`` of each answer
are tallied and, with ``--csv PREFIX``, written to ``PREFIX_batches.csv`` next
to ``PREFIX_final_stats.csv`` (locust's stats, complete; see ``_write_final_files``).

Self-contained (no project imports) so that locust loads it as a plain file
from any working directory; it finds its corpus next to itself.
"""

from __future__ import annotations

import csv
import json
import logging
import random
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locust import FastHttpUser, constant, events, task

__all__ = [
    "BATCH_STATS",
    "BatchStats",
    "MixedUploader",
    "Photo",
    "PhotoUploader",
    "check_answer",
    "encode_multipart",
    "load_corpus",
]

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
    photos = []
    if manifest.is_file():
        for entry in json.loads(manifest.read_text())["files"]:
            expected = entry.get("expected_class_ids")
            photos.append(
                Photo(
                    entry["name"],
                    (directory / entry["name"]).read_bytes(),
                    entry.get("content_type") or _SUFFIX_TYPES[Path(entry["name"]).suffix.lower()],
                    frozenset(expected) if expected else None,
                )
            )
    else:
        for path in sorted(directory.iterdir()):
            if path.suffix.lower() in _SUFFIX_TYPES:
                photos.append(Photo(path.name, path.read_bytes(), _SUFFIX_TYPES[path.suffix.lower()]))
    if not photos:
        raise ValueError(f"no photos in corpus folder {directory}: run python -m loadtest.make_corpus")
    return photos


def encode_multipart(photo: Photo, fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """Encode ``photo`` as multipart field ``file`` plus plain ``fields``; return body, Content-Type."""
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in (fields or {}).items():
        header = f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
        parts.append(f"{header}{value}\r\n".encode())
    parts.append(
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{photo.name}"\r\n'
            f"Content-Type: {photo.content_type}\r\n\r\n"
        ).encode()
        + photo.data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def check_answer(
    status: int, body: bytes | None, photo: Photo, check_classes: bool = False
) -> tuple[dict[str, Any] | None, str | None]:
    """Return ``(payload, None)`` for a good answer, ``(payload_or_None, reason)`` for a failure.

    Reasons are short and carry no ids, so locust groups equal failures together.
    """
    try:
        payload = json.loads(body or b"")
    except ValueError:
        payload = None
    if status != 200:
        code = ""
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            code = f" {payload['error'].get('code', '')}".rstrip()
        return payload if isinstance(payload, dict) else None, f"HTTP {status}{code}"
    if not isinstance(payload, dict):
        return None, "200 without a JSON object"
    if not payload.get("prediction"):
        return payload, "200 without prediction"
    if check_classes and photo.expected_class_ids is not None:
        returned = {p.get("class_id") for p in payload.get("predictions") or [] if isinstance(p, dict)}
        if not returned & photo.expected_class_ids:
            return payload, f"wrong classes for {photo.name}"
    return payload, None


class BatchStats:
    """Tally of ``batch_size`` and ``timings_ms`` over good answers, by batch size.

    Per batch size ``b`` it keeps the number of requests and the sums of their
    inference, queue and total times. Means per request, per batch
    (requests / b) and per image (inference / b) follow from these sums.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[int, list[float]] = {}

    def record(self, payload: dict[str, Any]) -> None:
        """Add one answer."""
        try:
            size = int(payload["batch_size"])
        except (KeyError, TypeError, ValueError):
            return
        timings = payload.get("timings_ms") or {}
        values = [1.0] + [float(timings.get(k) or 0.0) for k in ("inference", "queue", "total")]
        with self._lock:
            row = self._rows.setdefault(size, [0.0, 0.0, 0.0, 0.0])
            for i, value in enumerate(values):
                row[i] += value

    def merge(self, rows: dict[Any, list[float]]) -> None:
        """Add rows sent by another process (JSON turns the keys into strings)."""
        with self._lock:
            for size, values in rows.items():
                row = self._rows.setdefault(int(size), [0.0, 0.0, 0.0, 0.0])
                for i, value in enumerate(values):
                    row[i] += value

    def drain(self) -> dict[int, list[float]]:
        """Return the rows and start over."""
        with self._lock:
            rows, self._rows = self._rows, {}
        return rows

    def reset(self) -> None:
        """Forget everything (locust's ``--reset-stats`` after the ramp-up)."""
        self.drain()

    def rows(self) -> list[tuple[int, int, float, float, float]]:
        """``BATCH_CSV_COLUMNS`` rows, smallest batch first."""
        with self._lock:
            return [(size, int(v[0]), v[1], v[2], v[3]) for size, v in sorted(self._rows.items())]

    def summary(self) -> str:
        """One line: requests, mean batch size per request and per batch."""
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
            writer = csv.writer(fh)
            writer.writerow(BATCH_CSV_COLUMNS)
            writer.writerows(self.rows())


#: This process's tally (the master's, in a distributed run).
BATCH_STATS = BatchStats()
_corpus: list[Photo] | None = None


def _options(environment: Any) -> Any:
    return getattr(environment, "parsed_options", None)


class _Uploader(FastHttpUser):
    """Shared upload logic; not a scenario by itself."""

    abstract = True
    #: Closed loop: no think time (see the module docstring).
    wait_time = constant(0)

    def on_start(self) -> None:
        """Load the corpus once per process and seed this user's own random choice of photos."""
        global _corpus
        if _corpus is None:
            # --corpus-dir, or LOADTEST_CORPUS_DIR through locust's own option parser.
            directory = getattr(_options(self.environment), "corpus_dir", None)
            _corpus = load_corpus(Path(directory) if directory else CORPUS_DIR)
        self.photos = _corpus
        self.check_classes = bool(getattr(_options(self.environment), "check_classes", False))
        self.rng = random.Random()

    def upload(self, top_k: int | None = None) -> None:
        """POST one random corpus photo to /predict and judge the answer."""
        photo = self.rng.choice(self.photos)
        body, content_type = encode_multipart(photo, {"top_k": str(top_k)} if top_k else None)
        name = "/predict" if top_k is None else f"/predict?top_k={top_k}"
        # geventhttpclient sends a bytes body as is; locust's annotation only lists str and dict.
        with self.client.post(
            "/predict",
            data=body,  # type: ignore[arg-type]
            headers={"Content-Type": content_type},
            name=name,
            catch_response=True,
        ) as response:
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
    parser.add_argument(
        "--check-classes",
        action="store_true",
        default=False,
        env_var="LOADTEST_CHECK_CLASSES",
        help="fail answers whose top-k misses the ImageNet ids in corpus/MANIFEST.json",
    )
    parser.add_argument(
        "--corpus-dir", default="", env_var="LOADTEST_CORPUS_DIR", help="folder of photos to upload"
    )


@events.init.add_listener
def _on_init(environment: Any, **_kwargs: Any) -> None:
    # Without named scenarios locust would run every user class; run the default ones only.
    options = _options(environment)
    if options is not None and not getattr(options, "user_classes", None):
        chosen = [cls for cls in environment.user_classes if cls.__name__ in DEFAULT_USER_CLASSES]
        if chosen:
            environment.user_classes[:] = chosen

    # --reset-stats drops the ramp-up from locust's stats (runners.py, on_spawning_complete);
    # drop it from the batch tally too.
    def on_spawning_complete(user_count: int, **_kw: Any) -> None:
        if environment.reset_stats:
            BATCH_STATS.reset()

    environment.events.spawning_complete.add_listener(on_spawning_complete)
    environment.events.reset_stats.add_listener(BATCH_STATS.reset)
    # "quit" fires after the runner has stopped every user, before locust closes its CSV files.
    environment.events.quit.add_listener(lambda **_kw: _write_final_files(environment))


@events.test_start.add_listener
def _on_test_start(**_kwargs: Any) -> None:
    BATCH_STATS.reset()


@events.report_to_master.add_listener
def _on_report_to_master(client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
    data["batch_stats"] = BATCH_STATS.drain()


@events.worker_report.add_listener
def _on_worker_report(client_id: str, data: dict[str, Any], **_kwargs: Any) -> None:
    BATCH_STATS.merge(data.get("batch_stats") or {})


def _write_final_files(environment: Any) -> None:
    """At the very end, write ``PREFIX_final_stats.csv`` and ``PREFIX_batches.csv`` together.

    Locust refreshes ``PREFIX_stats.csv`` once a second and does not rewrite it when
    it stops, so that file can miss the last second of a run. The final file has the
    same columns, written by locust's own ``StatsCSV`` after every user has stopped,
    and covers exactly the answers the batch tally covers.
    """
    from locust import stats
    from locust.runners import WorkerRunner

    if isinstance(environment.runner, WorkerRunner):
        return
    logger.info("batch sizes seen by clients: %s", BATCH_STATS.summary())
    prefix = getattr(_options(environment), "csv_prefix", None)
    if not prefix:
        return
    with open(f"{prefix}_final_stats.csv", "w", newline="") as fh:
        stats.StatsCSV(environment, stats.PERCENTILES_TO_REPORT).requests_csv(csv.writer(fh))
    BATCH_STATS.write_csv(Path(f"{prefix}_batches.csv"))
