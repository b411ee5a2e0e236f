"""Slow and oversized clients against the real web tier: nginx reads each request whole, so slow
connections hold no gunicorn thread; it closes a head unfinished ``WEB_READ_TIMEOUT`` after the connection
opened, and a body that pauses that long, without an answer (no 408: docs/operations.md)."""
from __future__ import annotations

import json
import select
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field

import pytest
import redis

from common.config import async_queue_of
from deploy.stack import wait_until
from tests.support.stack import start_web
from webapp import MULTIPART_OVERHEAD_BYTES

THREADS = EACH = 4  # gunicorn's threads; connections of each slow kind
READ_TIMEOUT = 5.0  # long enough for the ordinary requests below while every trickler is open
TRICKLE_EVERY = 0.25  # seconds between two trickled bytes
ANSWER_WITHIN = 5.0  # an ordinary request answered later counts as stalled (they take milliseconds)
QUEUE = f"slow-{uuid.uuid4().hex[:8]}"
#: The largest body with MAX_UPLOAD_MB=1, as the app's own limit.
MAX_BODY = 1024 * 1024 + MULTIPART_OVERHEAD_BYTES

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def port(redis_url: str) -> Iterator[int]:
    """The web tier, small and strict, without a worker; its async queue holds at most one task."""
    with ExitStack() as stack:
        url, _ = start_web(stack, redis_url, ready="/healthz", WEB_THREADS=str(THREADS),
                           WEB_READ_TIMEOUT=str(READ_TIMEOUT), MAX_UPLOAD_MB="1", CELERY_QUEUE=QUEUE,
                           MAX_QUEUE_LENGTH="1")
        yield int(url.rsplit(":", 1)[1])


@dataclass
class SlowClient:
    """One connection sending ``rest`` a byte at a time (never its last byte; nothing if empty)."""

    kind: str
    sock: socket.socket
    rest: bytes
    opened: float
    received: bytes = b""
    closed: float | None = None


@dataclass
class Tricklers:
    """Slow clients fed by a thread until the server closes them or the test ends."""

    port: int
    clients: list[SlowClient] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def open(self, kind: str, sent: bytes, rest: bytes = b"", first: bytes = b"") -> None:
        """Send ``sent``, then trickle ``rest``; ``first``: a whole request answered before (kept alive)."""
        opened = time.monotonic()
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        if first:
            sock.sendall(first)
            assert _read_response(sock)[0] == 200
            opened = time.monotonic()
        sock.sendall(sent)
        self.clients.append(SlowClient(kind, sock, rest, opened))

    def open_kinds(self) -> list[str]:
        return sorted(client.kind for client in self.clients if client.closed is None)

    def run(self) -> None:
        while not self.stop.is_set():
            for client in self.clients:
                if client.closed is None:
                    self._step(client)
            self.stop.wait(TRICKLE_EVERY)

    def _step(self, client: SlowClient) -> None:
        try:
            while select.select([client.sock], [], [], 0)[0]:
                data = client.sock.recv(4096)
                if not data:
                    raise ConnectionResetError("closed by the server")
                client.received += data
            if client.rest:
                client.sock.send(client.rest[:1])
                client.rest = client.rest[1:] or client.rest  # never the last byte
        except OSError:
            client.closed = time.monotonic()
            client.sock.close()


def _ordinary_requests_are_answered(port: int) -> None:
    """``/healthz`` and an upload of no image, each on a new connection, answered at once."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=ANSWER_WITHIN) as response:
        assert response.status == 200
    body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\nnot an image\r\n--b--\r\n")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=body, method="POST",
                                     headers={"Content-Type": "multipart/form-data; boundary=b"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=ANSWER_WITHIN)
    answer = (refused.value.code, json.loads(refused.value.read())["error"]["code"])
    assert answer in {(415, "unsupported_media_type"), (503, "model_unavailable")}  # no worker runs


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
UPLOAD_HEAD = b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"


def test_slow_clients_hold_no_thread_and_slow_heads_are_cut_at_the_read_timeout(port: int) -> None:
    tricklers = Tricklers(port)
    feeder = threading.Thread(target=tricklers.run, daemon=True)
    try:
        for _ in range(EACH):
            # slowloris: the head never ends; then the same on a kept-alive connection
            tricklers.open("head", b"GET /healthz HTTP/1.1\r\nHost: test\r\n", b"X-Slow: " + b"a" * 1000)
            tricklers.open("next head", b"GET /healthz HTTP/1.1\r\n", b"X: " + b"c" * 1000, first=HEALTHZ)
            # a body that never ends, trickled or stalled
            tricklers.open("body", UPLOAD_HEAD + b"Content-Length: 1000\r\n\r\n", b"b" * 1000)
            tricklers.open("stalled body", UPLOAD_HEAD + b"Content-Length: 1000\r\n\r\nbb")
            tricklers.open("idle", b"", first=HEALTHZ)
        everyone = sorted(client.kind for client in tricklers.clients)
        assert len(everyone) == 5 * THREADS
        feeder.start()

        # Ordinary requests, each on a new connection, while every trickler is open.
        for _ in range(5):
            assert tricklers.open_kinds() == everyone
            _ordinary_requests_are_answered(port)
        assert tricklers.open_kinds() == everyone

        # However steadily they trickle, heads are cut at the deadline, and so are stalled bodies.
        survivors = ["body"] * EACH + ["idle"] * EACH
        wait_until(lambda: None if tricklers.open_kinds() == survivors else f"open: {tricklers.open_kinds()}",
                   READ_TIMEOUT + 10, interval=0.2)
        # A body still trickling holds no thread either.
        _ordinary_requests_are_answered(port)
        assert tricklers.open_kinds() == survivors
    finally:
        tricklers.stop.set()
        if feeder.is_alive():
            feeder.join(timeout=5)
        for client in tricklers.clients:
            client.sock.close()
    for client in tricklers.clients:
        if client.kind in survivors:
            assert time.monotonic() - client.opened > READ_TIMEOUT
            continue
        # nginx closes them without a word: no 408.
        assert client.received == b"", (client.kind, client.received)
        assert client.closed is not None and client.closed - client.opened >= READ_TIMEOUT - 0.05, client.kind


def test_an_oversized_body_is_refused_from_its_head_with_the_apps_error(port: int) -> None:
    for framing in (f"Content-Length: {MAX_BODY + 1}\r\n\r\n".encode(),
                    b"Transfer-Encoding: chunked\r\n\r\n" + f"{MAX_BODY + 1:x}\r\n".encode() + b"x" * 100):
        with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WITHIN) as sock:
            sock.sendall(UPLOAD_HEAD + framing)  # and none, or the first bytes, of the body
            status, head, body = _read_response(sock)
        assert status == 413 and b"content-type: application/json" in head.lower()
        error = json.loads(body)["error"]
        assert error["code"] == "payload_too_large" and set(error) == {"code", "message"}  # the app's shape


@pytest.mark.parametrize("query", ["?async=true", "?timeout=soon"])
def test_requests_refused_before_their_upload_is_read_are_answered_never_reset(
        port: int, clean_redis: redis.Redis, query: str) -> None:
    """A full queue (503) or a bad deadline (400), answered before the upload is parsed: the app reads the
    rest first, so gunicorn never resets nginx's connection (a 502) and kept-alive connections stay."""
    clean_redis.lpush(async_queue_of(QUEUE), b"{}")
    request = (f"POST /predict{query} HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
               "Content-Length: 1000000\r\n\r\n").encode() + b"\x00" * 1_000_000

    def three_on_one_connection(_: int) -> list[tuple[int, bytes, bytes]]:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            replies = []
            for _ in range(3):
                sock.sendall(request)
                replies.append(_read_response(sock))
            return replies

    # The queue's length is cached for 100 ms: wait until the app has read it.
    wait_until(lambda: None if three_on_one_connection(0)[-1][0] != 415 else "queue not seen full", 10,
               interval=0.1)
    with ThreadPoolExecutor(8 * THREADS) as pool:
        replies = [reply for replies in pool.map(three_on_one_connection, range(8 * THREADS))
                   for reply in replies]
    status, code = (503, "overloaded") if query == "?async=true" else (400, "invalid_parameter")
    assert Counter(reply[0] for reply in replies) == {status: len(replies)}  # no 502
    assert {json.loads(body)["error"]["code"] for _, _, body in replies} == {code}
    assert all(b"connection: close" not in head.lower() for _, head, _ in replies)


def _read_response(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """One HTTP response (status, head, body) read from ``sock``, its body by Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        rest += chunk
    return int(head.split()[1]), head, rest[:length]
