"""gunicorn's gthread worker, reading each request whole before a thread serves it.

gunicorn's ``gthread`` worker hands a connection to a thread as soon as its
first bytes arrive; the thread then reads the rest with blocking ``recv``
calls, without a deadline. A client that trickles its headers or body a byte
at a time holds that thread as long as it likes, and ``WEB_THREADS`` such
clients stall the process (gunicorn's docs answer this with a buffering proxy
in front, nginx's ``proxy_request_buffering``). :class:`BufferingThreadWorker`
does that buffering itself, in the worker's event loop:

* the loop reads a connection's bytes without blocking until one whole
  request is in hand (its head, then ``Content-Length`` bytes or the chunked
  body's last chunk: :class:`RequestFramer`); only then does a thread get it,
  with the bytes already in gunicorn's parser, so threads never wait on a
  client;
* a request not complete ``read_timeout`` seconds after its first byte (after
  the accept, for a new connection) is answered ``408`` and the connection
  closed (a connection that sent nothing is just closed);
* past the limits (a head over :data:`MAX_HEAD_BYTES`, a body over
  ``max_body``, framing gunicorn rejects), a thread gets the request at once
  and answers it from what it has (400, 413...); it reads the socket only
  until the same deadline and then closes the connection.

Everything else (keep-alive, the thread pool, the per-process result
listener of the app) is gthread's. With TLS or cleartext HTTP/2 configured
the bytes cannot be framed here, so the worker behaves as plain gthread and
says so in its log: terminate TLS in a proxy in front instead.
"""
from __future__ import annotations

import errno
import json
import re
import selectors
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

from gunicorn.http.errors import NoMoreData
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers.gthread import TConn, ThreadWorker

from .errors import error_body

__all__ = ["MAX_HEAD_BYTES", "BufferingThreadWorker", "RequestFramer"]

#: A head (request line and fields) longer than this is not buffered further:
#: gunicorn's own limits (``limit_request_*``, about 800 KiB at most by
#: default) reject it from the bytes in hand.
MAX_HEAD_BYTES = 1024 * 1024
#: Most bytes per ``recv`` in the event loop (into one buffer, reused).
_RECV_BYTES = 1024 * 1024
#: A chunk-size line longer than this is malformed (gunicorn rejects it).
_MAX_CHUNK_LINE = 1024
_DIGITS = re.compile(r"[0-9]+")


def _timeout_response() -> bytes:
    body = json.dumps(error_body("request_timeout", "the request did not arrive in time")).encode()
    head = ("HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("ascii") + body


#: What a client whose request did not arrive in time gets (``webapp.errors``' shape).
_REQUEST_TIMEOUT = _timeout_response()


class RequestFramer:
    """Where the first HTTP/1.x request in a byte buffer ends, or whether more bytes are needed.

    :meth:`check` returns None (need more) or the offset from which a thread
    may take the request; :attr:`whole` says whether the request is complete
    there (False: handed over early, past a limit or malformed, for gunicorn
    to answer; the connection is not kept alive afterwards).
    """

    def __init__(self, max_body: int, max_head: int = MAX_HEAD_BYTES) -> None:
        if max_body < 0 or max_head <= 0:
            raise ValueError("max_body must be >= 0 and max_head > 0")
        self.max_body = max_body
        self.max_head = max_head
        #: False once the request is handed over before it is complete.
        self.whole = True
        #: The head asked for ``100 Continue`` (HTTP/1.1).
        self.expects_continue = False
        self._head_end: int | None = None
        self._head_scanned = 0  # bytes already searched for the head's end
        self._body_end: int | None = None  # known length: the request's end
        self._chunk_pos: int | None = None  # chunked: where the next chunk-size line starts

    @property
    def head_complete(self) -> bool:
        return self._head_end is not None

    def check(self, buf: bytes | bytearray) -> int | None:
        """The offset a thread may take the request from ``buf`` at, or None for more bytes."""
        if self._head_end is None:
            end = buf.find(b"\r\n\r\n", self._head_scanned)
            if end < 0:
                self._head_scanned = max(0, len(buf) - 3)
                return self._early(len(buf)) if len(buf) > self.max_head else None
            self._head_end = end + 4
            early = self._read_head(bytes(buf[:end]))
            if early:
                return self._early(self._head_end)
        if self._body_end is not None:
            return self._body_end if len(buf) >= self._body_end else None
        return self._scan_chunks(buf)

    def _early(self, offset: int) -> int:
        self.whole = False
        return offset

    def _read_head(self, head: bytes) -> bool:
        """Learn the body's framing from the head; True: hand it over as it is."""
        assert self._head_end is not None
        lines = head.decode("latin-1").split("\r\n")
        http11 = lines[0].rstrip().endswith("HTTP/1.1")
        lengths: list[str] = []
        encodings: list[str] = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                lengths.append(value.strip())
            elif name == "transfer-encoding":
                encodings.append(value.strip().lower())
            elif name == "expect" and value.strip().lower() == "100-continue":
                self.expects_continue = http11
        if encodings:
            if lengths or encodings != ["chunked"]:
                return True  # gunicorn answers 400/501 from the head alone
            self._chunk_pos = self._head_end
            return False
        if len(lengths) > 1 or (lengths and not _DIGITS.fullmatch(lengths[0])):
            return True  # gunicorn answers 400
        # 19 digits or more is over any body this buffers (and int() of
        # thousands of digits raises).
        text = lengths[0] if lengths else "0"
        length = int(text) if len(text) < 19 else self.max_body + 1
        if length > self.max_body:
            return True  # the app answers 413 from Content-Length alone
        self._body_end = self._head_end + length
        return False

    def _scan_chunks(self, buf: bytes | bytearray) -> int | None:
        pos = self._chunk_pos
        assert pos is not None and self._head_end is not None
        while True:
            if pos - self._head_end > self.max_body:
                return self._early(pos)
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return self._early(pos) if len(buf) - pos > _MAX_CHUNK_LINE else None
            size_text = bytes(buf[pos:line_end]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16) if size_text.isalnum() else -1
            except ValueError:
                size = -1
            if size < 0 or size > self.max_body:
                return self._early(pos)
            if size == 0:
                # The last chunk, then trailer fields up to an empty line.
                trailers_end = buf.find(b"\r\n\r\n", line_end)
                if trailers_end < 0:
                    return self._early(pos) if len(buf) - pos > self.max_head else None
                return trailers_end + 4
            next_pos = line_end + 2 + size + 2
            if len(buf) < next_pos:
                return None
            pos = self._chunk_pos = next_pos


class _DeadlineUnreader(SocketUnreader):
    """gunicorn's socket reader, ending the connection when the request's deadline passes.

    A safety net: the event loop hands a thread whole requests, so this reads
    the socket only for a request handed over early.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        #: ``time.monotonic()`` after which no more of the request is waited for.
        self.deadline = 0.0

    def chunk(self, size_hint: int | None = None) -> bytes:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise NoMoreData()
        prior = self.sock.gettimeout()
        self.sock.settimeout(remaining if prior is None else min(prior, remaining))
        try:
            return bytes(super().chunk(size_hint))
        except TimeoutError:
            raise NoMoreData() from None
        finally:
            self.sock.settimeout(prior)


@dataclass(eq=False)
class _Inbox:
    """One connection's request as it arrives in the event loop."""

    deadline: float
    framer: RequestFramer
    buf: bytearray = field(default_factory=bytearray)
    sent_continue: bool = False
    registered: bool = False  # with the poller, waiting for bytes


class BufferingThreadWorker(ThreadWorker):
    """gthread, with each request read whole in the event loop before a thread serves it."""

    # webapp/gunicorn.conf.py sets both from the settings (:meth:`configured`).
    #: Seconds a client has to send one whole request (``WEB_READ_TIMEOUT``).
    read_timeout: float = 30.0
    #: Largest body buffered; a longer ``Content-Length`` goes to the app at once (413).
    max_body: int = 16 * 1024 * 1024

    @classmethod
    def configured(cls, *, read_timeout: float, max_body: int) -> type[BufferingThreadWorker]:
        """A subclass with these limits (gunicorn's ``worker_class`` takes a class)."""
        if read_timeout <= 0 or max_body < 0:
            raise ValueError("read_timeout must be > 0 and max_body >= 0")
        limits = {"read_timeout": float(read_timeout), "max_body": int(max_body),
                  "__module__": cls.__module__}
        return cast(type[BufferingThreadWorker], type(cls.__name__, (cls,), limits))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Connections whose request is arriving, and their bytes so far.
        self._inboxes: dict[Any, _Inbox] = {}
        #: (deadline, connection, inbox) in deadline order; stale entries are skipped.
        self._deadlines: deque[tuple[float, Any, _Inbox]] = deque()
        #: The event loop's receive buffer (only the loop's thread uses it).
        self._scratch = memoryview(bytearray(_RECV_BYTES))
        self._buffering = not (self.cfg.is_ssl or getattr(self.cfg, "http2_cleartext", "off") != "off")

    def init_process(self) -> None:
        if not self._buffering:
            self.log.warning("Requests are not buffered with TLS or cleartext HTTP/2: slow clients "
                             "can hold threads (terminate TLS in a proxy in front)")
        super().init_process()

    # -- the event loop (gunicorn's main thread) ------------------------------

    def accept(self, listener: socket.socket) -> None:
        """gthread's accept; the new connection starts in an inbox."""
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, client_sock, client_addr, listener.getsockname())  # non-blocking
        self.enqueue_req(conn)

    def enqueue_req(self, conn: Any) -> None:
        """Give ``conn`` to a thread once its next request is here whole."""
        if not self._buffering or getattr(conn, "request_ready", False):
            conn.request_ready = False
            super().enqueue_req(conn)
            return
        inbox = _Inbox(time.monotonic() + self.read_timeout, RequestFramer(self.max_body))
        if conn.parser is not None:  # bytes read ahead behind the last request
            inbox.buf += conn.parser.unreader.take_buffered()
        conn.sock.setblocking(False)
        self._inboxes[conn] = inbox
        self._deadlines.append((inbox.deadline, conn, inbox))
        if not self._receive(conn, inbox):
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
            inbox.registered = True

    def _on_readable(self, conn: Any, _sock: socket.socket) -> None:
        inbox = self._inboxes.get(conn)
        if inbox is not None:
            self._receive(conn, inbox)

    def _receive(self, conn: Any, inbox: _Inbox) -> bool:
        """Read what has arrived; True once ``conn`` has left its inbox (to a thread, or closed)."""
        while True:
            end = self._request_end(conn, inbox) if inbox.buf else None
            if end is not None:
                self._hand_over(conn, inbox)
                return True
            if inbox.framer.expects_continue and not inbox.sent_continue:
                inbox.sent_continue = True
                try:
                    conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                except OSError:
                    pass  # the reads below see what became of the client
            try:
                received = conn.sock.recv_into(self._scratch)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                received = 0
            if not received:  # the client left before its request was whole
                self._close(conn, inbox, answer=False)
                return True
            inbox.buf += self._scratch[:received]

    def _request_end(self, conn: Any, inbox: _Inbox) -> int | None:
        try:
            return inbox.framer.check(inbox.buf)
        except Exception:  # a framing bug must cost one request, not the event loop
            self.log.exception("Cannot frame the request from %s: handing it over as it is",
                               conn.client)
            inbox.framer.whole = False
            return len(inbox.buf)

    def _leave_inbox(self, conn: Any, inbox: _Inbox) -> None:
        del self._inboxes[conn]
        if inbox.registered:
            inbox.registered = False
            self.poller.unregister(conn.sock)

    def _hand_over(self, conn: Any, inbox: _Inbox) -> None:
        self._leave_inbox(conn, inbox)
        conn.sock.setblocking(True)
        conn.init()  # the parser (once per connection); reads nothing without TLS or h2c
        unreader = conn.parser.unreader
        if not isinstance(unreader, _DeadlineUnreader):
            unreader = conn.parser.unreader = _DeadlineUnreader(conn.sock)
        unreader.deadline = inbox.deadline
        unreader.unread(bytes(inbox.buf))
        conn.data_ready = True
        conn.request_whole = inbox.framer.whole
        conn.request_ready = True
        self.enqueue_req(conn)

    def _close(self, conn: Any, inbox: _Inbox, *, answer: bool) -> None:
        """Drop ``conn`` from its inbox and close it, after a 408 when ``answer``."""
        self._leave_inbox(conn, inbox)
        if answer:
            try:
                # Unread bytes at close() make it a reset, which can discard the answer.
                while conn.sock.recv_into(self._scratch):
                    pass
            except OSError:
                pass  # nothing more to read (or the client is gone)
            try:
                conn.sock.send(_REQUEST_TIMEOUT)
            except OSError:
                pass
        self.nr_conns -= 1
        conn.close()

    def murder_keepalived(self, force: bool = False) -> None:
        """gthread's idle keep-alive timeout, then this worker's read deadline."""
        super().murder_keepalived(force)
        now = time.monotonic()
        while self._deadlines and (force or self._deadlines[0][0] <= now):
            _, conn, inbox = self._deadlines.popleft()
            if self._inboxes.get(conn) is inbox:
                if inbox.buf:
                    self.log.debug("Request from %s not whole after %.0f s: 408",
                                   conn.client, self.read_timeout)
                self._close(conn, inbox, answer=bool(inbox.buf))

    # -- the threads ------------------------------------------------------------

    def handle_request(self, req: Any, conn: Any) -> Any:
        if getattr(conn, "request_whole", False):
            # The body is here already: no "100 Continue" after it.
            req._expected_100_continue = False
        return super().handle_request(req, conn)

    def _keepalive_after(self, conn: Any, keepalive: Any) -> bool:
        if not self._buffering:
            return bool(super()._keepalive_after(conn, keepalive))
        # A request handed over early may have left bytes on the socket: close.
        if not keepalive or not getattr(conn, "request_whole", False):
            return False
        # The whole request is in memory: skipping what the app left unread (a
        # 503 or 401 answered before the upload was parsed) reads no socket,
        # so gthread's cap on draining a client's bytes (64 KiB) has no
        # purpose here, and the connection stays open for the next request.
        return bool(conn.parser.finish_body())
