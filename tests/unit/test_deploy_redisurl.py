"""deploy/redisurl.py: parse and rewrite Redis URLs, ping a server."""
from __future__ import annotations

import socketserver
import threading
from collections.abc import Iterator

import pytest

from deploy import redisurl
from deploy.stack import free_port


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://127.0.0.1:6379/0", ("127.0.0.1", 6379, 0, None, None, False)),
    ("redis://localhost", ("localhost", 6379, 0, None, None, False)),
    ("rediss://user:p%40ss@cache.example:6380/15", ("cache.example", 6380, 15, "user", "p@ss", True)),
    ("redis://:secret@[::1]:7000/2", ("::1", 7000, 2, None, "secret", False)),
])
def test_parse(url: str, expected: tuple[object, ...]) -> None:
    address = redisurl.parse(url)
    parts = (address.host, address.port, address.db, address.username, address.password, address.tls)
    assert parts == expected


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "redis://127.0.0.1:port/0", "redis://127.0.0.1/db"])
def test_parse_rejects_what_is_not_a_redis_url(url: str) -> None:
    with pytest.raises(ValueError):
        redisurl.parse(url)


def test_rewrite_port_and_db_keeps_the_rest() -> None:
    assert redisurl.with_port("redis://:pw@127.0.0.1:6379/0", 7001) == "redis://:pw@127.0.0.1:7001/0"
    assert redisurl.with_port("redis://[::1]/3", 7002) == "redis://[::1]:7002/3"
    assert redisurl.with_db("redis://127.0.0.1:6379/0", 15) == "redis://127.0.0.1:6379/15"
    assert redisurl.with_db("redis://127.0.0.1", 15) == "redis://127.0.0.1/15"
    with pytest.raises(ValueError):
        redisurl.with_port("redis://127.0.0.1", 70000)


def test_is_local() -> None:
    assert redisurl.is_local("redis://127.0.0.1:6379/0")
    assert redisurl.is_local("redis://localhost/0")
    assert not redisurl.is_local("redis://redis:6379/0")


class _FakeRedis(socketserver.StreamRequestHandler):
    """Enough RESP for PING and AUTH; records the commands it got."""

    def handle(self) -> None:
        server = self.server
        while True:
            header = self.rfile.readline()
            if not header:
                return
            words = []
            for _ in range(int(header[1:])):
                self.rfile.readline()  # $len
                words.append(self.rfile.readline().strip().decode())
            server.commands.append(words)  # type: ignore[attr-defined]
            if words[0] == "AUTH":
                ok = words[-1] == server.password  # type: ignore[attr-defined]
                self.wfile.write(b"+OK\r\n" if ok else b"-WRONGPASS invalid password\r\n")
            elif server.password and ["AUTH", server.password] not in server.commands:  # type: ignore[attr-defined]
                self.wfile.write(b"-NOAUTH Authentication required.\r\n")
            else:
                self.wfile.write(b"+PONG\r\n")


@pytest.fixture
def fake_redis() -> Iterator[socketserver.ThreadingTCPServer]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _FakeRedis)
    server.daemon_threads = True
    server.commands = []  # type: ignore[attr-defined]
    server.password = ""  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_ping_gets_pong(fake_redis: socketserver.ThreadingTCPServer) -> None:
    port = fake_redis.server_address[1]
    assert redisurl.ping(f"redis://127.0.0.1:{port}/0")
    assert fake_redis.commands == [["PING"]]  # type: ignore[attr-defined]


def test_ping_authenticates_with_the_url_password(fake_redis: socketserver.ThreadingTCPServer) -> None:
    port = fake_redis.server_address[1]
    fake_redis.password = "s3cret"  # type: ignore[attr-defined]
    assert not redisurl.ping(f"redis://127.0.0.1:{port}/0")
    assert not redisurl.ping(f"redis://:wrong@127.0.0.1:{port}/0")
    assert redisurl.ping(f"redis://:s3cret@127.0.0.1:{port}/0")


def test_ping_of_a_closed_port_is_false() -> None:
    assert not redisurl.ping(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)


def test_cli_exit_codes(
        fake_redis: socketserver.ThreadingTCPServer, capsys: pytest.CaptureFixture[str]) -> None:
    port = fake_redis.server_address[1]
    assert redisurl.main(["ping", f"redis://127.0.0.1:{port}/0"]) == 0
    assert redisurl.main(["ping", f"redis://127.0.0.1:{free_port()}/0"]) == 1
    assert redisurl.main(["port", "redis://127.0.0.1:6390/0"]) == 0
    assert capsys.readouterr().out.strip() == "6390"
    assert redisurl.main(["ping", "http://nope"]) == 2
    assert redisurl.main(["free-port"]) == 0
    assert 0 < int(capsys.readouterr().out) < 65536


def test_wait_gives_up_after_its_timeout() -> None:
    assert not redisurl.wait(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2, interval=0.05)
