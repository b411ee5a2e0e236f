"""deploy/redisurl.py and deploy/amqpurl.py: read broker URLs, ping a server."""
from __future__ import annotations

import socketserver
from collections.abc import Iterator

import pytest

from deploy import amqpurl, redisurl
from deploy.stack import free_port
from tests.unit.test_deploy_stack import serving


@pytest.mark.parametrize(("url", "expected"), [
    ("redis://127.0.0.1:6379/0", ("127.0.0.1", 6379, 0, None, None, False)),
    ("redis://localhost", ("localhost", 6379, 0, None, None, False)),
    ("rediss://user:p%40ss@cache.example:6380/15", ("cache.example", 6380, 15, "user", "p@ss", True)),
    ("redis://:secret@[::1]:7000/2", ("::1", 7000, 2, None, "secret", False))])
def test_parse(url: str, expected: tuple[object, ...]) -> None:
    a = redisurl.parse(url)
    assert (a.host, a.port, a.db, a.username, a.password, a.tls) == expected


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "amqp://127.0.0.1//", "unix:///run/redis.sock",
                                 "redis://127.0.0.1:port/0", "redis://127.0.0.1/db"])
def test_parse_rejects_what_is_not_a_redis_url(url: str) -> None:
    with pytest.raises(ValueError):
        redisurl.parse(url)


def test_with_db_keeps_the_rest_and_is_local_knows_this_machine() -> None:
    assert redisurl.with_db("redis://:pw@127.0.0.1:6379/0", 15) == "redis://:pw@127.0.0.1:6379/15"
    assert redisurl.with_db("redis://127.0.0.1", 15) == "redis://127.0.0.1/15"
    assert redisurl.is_local("redis://127.0.0.1:6379/0") and redisurl.is_local("redis://localhost/0")
    assert not redisurl.is_local("redis://redis:6379/0")
    assert amqpurl.parse("amqp://guest:guest@127.0.0.1:5672//") == ("127.0.0.1", 5672, "/")
    assert amqpurl.parse("amqps://rabbit/jobs") == ("rabbit", 5671, "jobs")
    assert amqpurl.is_local("amqp://localhost//") and not amqpurl.is_local("amqp://rabbit//")
    with pytest.raises(ValueError):
        amqpurl.parse("redis://127.0.0.1")


class _FakeRedis(socketserver.BaseRequestHandler):
    """PONG to PING, after ``AUTH <its password>``; records what it got."""

    def handle(self) -> None:
        password, got = self.server.password, self.server.got  # type: ignore[attr-defined]
        authed = not password
        while data := self.request.recv(1024):
            got.append(data)
            if auth := data.startswith(b"*2\r\n$4\r\nAUTH"):
                authed = data.endswith(f"${len(password)}\r\n{password}\r\n".encode())
            reply = (b"+OK" if authed else b"-WRONGPASS") if auth else (b"+PONG" if authed else b"-NOAUTH")
            self.request.sendall(reply + b"\r\n")


@pytest.fixture
def fake_redis() -> Iterator[socketserver.BaseServer]:
    with serving(socketserver.ThreadingTCPServer(("127.0.0.1", 0), _FakeRedis)) as server:
        server.got, server.password = [], "s3cret"  # type: ignore[attr-defined]
        yield server


def test_ping_authenticates_with_the_url_password(fake_redis: socketserver.ThreadingTCPServer) -> None:
    port = fake_redis.server_address[1]
    assert not redisurl.ping(f"redis://127.0.0.1:{port}/0")
    assert not redisurl.ping(f"redis://:wrong@127.0.0.1:{port}/0")
    assert redisurl.ping(f"redis://:s3cret@127.0.0.1:{port}/0")
    assert fake_redis.got[-2:] == [b"*2\r\n$4\r\nAUTH\r\n$6\r\ns3cret\r\n",  # type: ignore[attr-defined]
                                   b"*1\r\n$4\r\nPING\r\n"]
    assert not redisurl.ping(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)


def test_cli_exit_codes(fake_redis: socketserver.ThreadingTCPServer, capsys: pytest.CaptureFixture[str],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret")  # what the Redis `make up` starts requires
    assert redisurl.main(["ping", f"redis://127.0.0.1:{fake_redis.server_address[1]}/0"]) == 0
    assert redisurl.main(["ping", f"redis://127.0.0.1:{free_port()}/0"]) == 1
    assert redisurl.main(["ping", "http://nope"]) == 2
    assert redisurl.main(["port", "redis://127.0.0.1:6390/0"]) == 0
    assert redisurl.main(["with-db", "redis://127.0.0.1:6390/0", "15"]) == 0
    assert capsys.readouterr().out.split() == ["6390", "redis://127.0.0.1:6390/15"]
    assert redisurl.main(["ping", f"amqp://127.0.0.1:{free_port()}//"]) == 1
    assert redisurl.main(["is-local", "amqp://localhost//"]) == 0


def test_wait_gives_up_after_its_timeout() -> None:
    assert not redisurl.wait(f"redis://127.0.0.1:{free_port()}/0", timeout=0.2, interval=0.05)
