"""Slow clients against a real gunicorn (``webapp/gunicorn.conf.py``, over HTTP).

Three times ``WEB_THREADS`` connections trickle their requests a byte at a
time (the head, the body, or a second request on a kept-alive connection);
meanwhile ordinary requests are answered, and each slow connection gets a 408
and is closed once ``WEB_READ_TIMEOUT`` has passed, however steadily it
trickles. Plain gthread (``GUNICORN_CMD_ARGS=--worker-class=gthread``) fails
this test: its threads wait on the tricklers.
"""
from __future__ import annotations

import json
import os
import select
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from common.config import async_queue_of
from deploy.stack import Process, command, free_port, wait_ready, wait_until
from tests.support.worker import service_env

THREADS = 8
#: Long enough for the ordinary requests below to run while every trickler is still open.
READ_TIMEOUT = 6.0
SLOW_CONNECTIONS = 3 * THREADS
#: Seconds between two trickled bytes: well under any per-read timeout.
TRICKLE_EVERY = 0.25
#: An ordinary request answered later than this counts as stalled (they take milliseconds).
ANSWER_WITHIN = 5.0

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def web(redis_url: str) -> Iterator[str]:
    """gunicorn alone (``/healthz`` and a rejected upload need no worker), small and strict."""
    port = free_port()
    fd, name = tempfile.mkstemp(prefix="web-slow-", suffix=".log")
    os.close(fd)
    log = Path(name)
    env = service_env(redis_url, BIND_HOST="127.0.0.1", WEB_PORT=str(port), WEB_THREADS=str(THREADS),
                      WEB_READ_TIMEOUT=str(READ_TIMEOUT))
    with Process(command("web"), log_path=log, env=env, name="gunicorn") as web:
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/healthz", 60.0, interval=0.2, give_up=web.exited)
        yield url
    log.unlink(missing_ok=True)


@dataclass
class SlowClient:
    """One connection trickling ``rest`` a byte at a time; what the server sent back."""

    sock: socket.socket
    rest: bytes
    opened: float
    received: bytes = b""
    closed: float | None = None


@dataclass
class Tricklers:
    """Slow clients fed by a thread until the server closes them."""

    clients: list[SlowClient] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def open(self, port: int, sent: bytes, rest: bytes) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        opened = time.monotonic()
        sock.sendall(sent)
        self.clients.append(SlowClient(sock, rest, opened))

    def open_after_a_request(self, port: int, rest: bytes) -> None:
        """A kept-alive connection: one whole request answered first, then the trickle."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        answer = b""
        while b'"ok"' not in answer:  # /healthz's whole body
            chunk = sock.recv(4096)
            assert chunk, f"closed before answering: {answer!r}"
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer
        self.clients.append(SlowClient(sock, rest, time.monotonic()))

    def open_count(self) -> int:
        return sum(client.closed is None for client in self.clients)

    def run(self) -> None:
        while not self.stop.is_set() and self.open_count():
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
            client.sock.send(client.rest[:1])
            client.rest = client.rest[1:] or client.rest  # never the last byte
        except OSError:
            client.closed = time.monotonic()
            client.sock.close()

    def close(self) -> None:
        for client in self.clients:
            client.sock.close()


def _healthz(url: str) -> int:
    with urllib.request.urlopen(f"{url}/healthz", timeout=ANSWER_WITHIN) as response:
        return int(response.status)


def _upload_not_an_image(url: str) -> tuple[int, str]:
    boundary = "slow-clients"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\nnot an image\r\n--{boundary}--\r\n").encode()
    request = urllib.request.Request(f"{url}/predict", data=body, method="POST", headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=ANSWER_WITHIN) as response:
            return int(response.status), ""
    except urllib.error.HTTPError as error:
        return error.code, str(json.loads(error.read())["error"]["code"])


def test_slow_clients_hold_no_thread_and_are_cut_at_the_read_timeout(web: str) -> None:
    port = int(web.rsplit(":", 1)[1])
    tricklers = Tricklers()
    feeder = threading.Thread(target=tricklers.run, daemon=True)
    try:
        for _ in range(SLOW_CONNECTIONS // 3):  # the next request never ends
            tricklers.open_after_a_request(port, b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"c" * 1000)
        for _ in range(SLOW_CONNECTIONS // 3):
            # slowloris: the head never ends
            tricklers.open(port, b"GET /healthz HTTP/1.1\r\nHost: test\r\n", b"X-Slow: " + b"a" * 1000)
            # the body never ends
            tricklers.open(port, b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/jpeg\r\n"
                           b"Content-Length: 1000\r\n\r\n", b"b" * 1000)
        feeder.start()

        # Ordinary requests, each on a new connection, while every trickler is open.
        for _ in range(5):
            assert tricklers.open_count() == SLOW_CONNECTIONS
            assert _healthz(web) == 200
            assert _upload_not_an_image(web) == (415, "unsupported_media_type")
        assert tricklers.open_count() == SLOW_CONNECTIONS

        # However steadily they trickle, the deadline cuts them all: 408, then closed.
        wait_until(lambda: None if not tricklers.open_count() else f"{tricklers.open_count()} still open",
                   READ_TIMEOUT + 10, interval=0.2)
    finally:
        tricklers.stop.set()
        if feeder.is_alive():
            feeder.join(timeout=5)
        tricklers.close()
    for client in tricklers.clients:
        assert client.received.startswith(b"HTTP/1.1 408 Request Timeout"), client.received
        assert b'"request_timeout"' in client.received
        assert client.closed is not None and client.closed - client.opened >= READ_TIMEOUT - 0.05
    # And the process still serves.
    assert _healthz(web) == 200



@pytest.fixture
def full_queue_web(redis_url: str, clean_redis: redis.Redis) -> Iterator[str]:
    """gunicorn whose async queue is full (``MAX_QUEUE_LENGTH=1``, one message in it)."""
    port, queue = free_port(), f"slow-{uuid.uuid4().hex[:8]}"
    clean_redis.lpush(async_queue_of(queue), b"{}")
    fd, name = tempfile.mkstemp(prefix="web-full-", suffix=".log")
    os.close(fd)
    env = service_env(redis_url, BIND_HOST="127.0.0.1", WEB_PORT=str(port), CELERY_QUEUE=queue,
                      MAX_QUEUE_LENGTH="1")
    with Process(command("web"), log_path=Path(name), env=env, name="gunicorn") as web:
        url = f"http://127.0.0.1:{port}"
        wait_ready(f"{url}/healthz", 60.0, interval=0.2, give_up=web.exited)
        yield url
    Path(name).unlink(missing_ok=True)


def test_a_request_refused_before_its_upload_is_read_keeps_the_connection(full_queue_web: str) -> None:
    # A full queue answers 503 before the upload is parsed: gthread alone would
    # then refuse to drain more than 64 KiB of it and drop the kept-alive
    # connection after the answer, failing the client's next request on it.
    host, port = full_queue_web.removeprefix("http://").split(":")
    body = b"\x00" * 300_000
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        replies = []
        for _ in range(2):
            sock.sendall(b"POST /predict?async=true HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            replies.append(_read_response(sock))
    assert [status for status, _ in replies] == [503, 503], replies
    assert all(b"connection: close" not in head.lower() for _, head in replies)

def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP response (status, head) read from ``sock``; its JSON body is consumed."""
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
    return int(head.split()[1]), head
