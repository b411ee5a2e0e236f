"""``webapp.gunicorn_worker``: where a request ends (``RequestFramer``) and the threads' read deadline.

The worker itself runs under a real gunicorn in ``tests/e2e/test_webapp_slow_clients.py``.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from gunicorn.http.errors import NoMoreData

from webapp.gunicorn_worker import MAX_HEAD_BYTES, BufferingThreadWorker, RequestFramer, _DeadlineUnreader

HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\n"


def feed(framer: RequestFramer, data: bytes, step: int = 1) -> list[int | None]:
    """``check`` after each ``step`` bytes, as a trickling client would deliver them."""
    return [framer.check(data[:end]) for end in range(step, len(data) + step, step)]


def test_a_request_without_a_body_ends_with_its_head() -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    answers = feed(RequestFramer(max_body=100), request)
    assert answers[:-1] == [None] * (len(request) - 1)
    assert answers[-1] == len(request)


def test_content_length_bytes_complete_the_request() -> None:
    request = HEAD + b"Content-Length: 5\r\n\r\nhello"
    framer = RequestFramer(max_body=100)
    assert framer.check(request[:-1]) is None
    assert framer.check(request) == len(request)
    assert framer.whole


def test_pipelined_bytes_stay_after_the_first_request() -> None:
    first = HEAD + b"content-length: 2\r\n\r\nhi"
    assert RequestFramer(max_body=100).check(first + b"GET / HTTP/1.1\r\n") == len(first)


def test_a_chunked_body_ends_with_its_last_chunk_and_trailers() -> None:
    request = HEAD + b"Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nTrailer: t\r\n\r\n"
    answers = feed(RequestFramer(max_body=100), request)
    assert answers[:-1] == [None] * (len(request) - 1)
    assert answers[-1] == len(request)


@pytest.mark.parametrize("head", [
    b"Content-Length: 101\r\n",  # over max_body: the app answers 413 from the head
    b"Content-Length: " + b"9" * 5000 + b"\r\n",
    b"Content-Length: 1\r\nContent-Length: 2\r\n",
    b"Content-Length: -1\r\n",
    b"Content-Length: \xb2\r\n",  # a digit to str.isdigit(), not to HTTP
    b"Transfer-Encoding: gzip\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
])
def test_what_gunicorn_rejects_from_the_head_goes_over_at_once(head: bytes) -> None:
    request = HEAD + head + b"\r\n"
    framer = RequestFramer(max_body=100)
    assert framer.check(request) == len(request)
    assert not framer.whole


@pytest.mark.parametrize("body", [b"zz\r\nhello\r\n", b"65\r\n", b"1" * 2000])
def test_a_malformed_or_oversized_chunk_goes_over_at_once(body: bytes) -> None:
    framer = RequestFramer(max_body=100)
    assert framer.check(HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body) is not None
    assert not framer.whole


def test_a_head_over_the_limit_goes_over_without_waiting_for_its_end() -> None:
    framer = RequestFramer(max_body=100, max_head=64)
    assert framer.check(HEAD + b"X: " + b"a" * 10) is None
    assert framer.check(HEAD + b"X: " + b"a" * 100) == len(HEAD) + 103
    assert not framer.whole


def test_expect_100_continue_is_seen_on_http_1_1_only() -> None:
    framer = RequestFramer(max_body=100)
    assert framer.check(HEAD + b"Expect: 100-Continue\r\nContent-Length: 5\r\n\r\n") is None
    assert framer.expects_continue
    old = RequestFramer(max_body=100)
    assert old.check(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n") is None
    assert not old.expects_continue


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_body"):
        RequestFramer(max_body=-1)
    with pytest.raises(ValueError, match="read_timeout"):
        BufferingThreadWorker.configured(read_timeout=0, max_body=1)
    worker_class = BufferingThreadWorker.configured(read_timeout=2, max_body=10)
    assert issubclass(worker_class, BufferingThreadWorker)
    assert (worker_class.read_timeout, worker_class.max_body) == (2.0, 10)
    assert BufferingThreadWorker.read_timeout == 30.0  # the base class keeps its own
    assert MAX_HEAD_BYTES >= 1024 * 1024


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def test_a_thread_reads_the_socket_only_until_the_deadline(
        socket_pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = socket_pair
    unreader = _DeadlineUnreader(ours)
    unreader.deadline = time.monotonic() + 0.2
    theirs.sendall(b"abc")
    assert unreader.read() == b"abc"
    with pytest.raises(NoMoreData):  # nothing more arrives before the deadline
        unreader.read()
    assert ours.gettimeout() is None  # blocking again, as gunicorn left it
    with pytest.raises(NoMoreData):  # past it, no read is even tried
        unreader.read()
