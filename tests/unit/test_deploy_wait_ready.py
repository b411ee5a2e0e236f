"""deploy/wait_ready.py: poll until 200, give up on timeout or on a FATAL program."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploy import wait_ready
from deploy.redisurl import free_port


class _Readyz(BaseHTTPRequestHandler):
    """Answers with the next status of ``server.statuses`` (the last one repeats)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        statuses: list[int] = self.server.statuses  # type: ignore[attr-defined]
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        body = b'{"status": "ok"}' if status == 200 else b'{"error": "no worker replied to ping"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def readyz() -> Iterator[tuple[str, list[int]]]:
    """A /readyz URL and the list of statuses it will answer with."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Readyz)
    server.statuses = [503]  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/readyz", server.statuses  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def test_probe_reads_the_status_and_the_reason(readyz: tuple[str, list[int]]) -> None:
    url, _ = readyz
    result = wait_ready.probe(url)
    assert (result.status, result.ready) == (503, False)
    assert "no worker replied" in result.detail


def test_probe_of_a_closed_port_has_no_status() -> None:
    result = wait_ready.probe(f"http://127.0.0.1:{free_port()}/readyz", timeout=1)
    assert result.status is None and not result.ready


def test_wait_returns_0_once_ready(readyz: tuple[str, list[int]]) -> None:
    url, statuses = readyz
    statuses[:] = [503, 503, 200]
    lines: list[str] = []
    assert wait_ready.wait(url, timeout=10, interval=0.01, out=lines.append) == 0
    assert statuses == [200]  # it asked until the 200
    assert lines[-1].startswith("ready:")


def test_wait_returns_1_after_the_timeout_with_the_last_reason(readyz: tuple[str, list[int]]) -> None:
    url, _ = readyz
    lines: list[str] = []
    assert wait_ready.wait(url, timeout=0.2, interval=0.01, report_every=0.05, out=lines.append) == 1
    assert "503" in lines[-1] and "no worker replied" in lines[-1]
    assert any(line.strip().startswith("waiting") for line in lines[:-1])


def test_wait_gives_up_at_once_when_a_program_is_fatal(readyz: tuple[str, list[int]]) -> None:
    url, _ = readyz
    lines: list[str] = []
    states = {"web": "RUNNING", "worker": "FATAL"}
    assert wait_ready.wait(url, timeout=60, interval=0.01, states=lambda: states, out=lines.append) == 2
    assert "worker" in lines[-1]


def test_progress_names_the_program_states(readyz: tuple[str, list[int]]) -> None:
    url, _ = readyz
    lines: list[str] = []
    wait_ready.wait(url, timeout=0.05, interval=0.01, states=lambda: {"worker": "STARTING"}, out=lines.append)
    assert "[worker STARTING]" in lines[0]


def test_timeout_0_probes_once(readyz: tuple[str, list[int]]) -> None:
    url, statuses = readyz
    statuses[:] = [503, 200]
    assert wait_ready.main([url, "--timeout", "0"]) == 1
    assert statuses == [200]
