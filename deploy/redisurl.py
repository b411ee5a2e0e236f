"""Read and ping Redis URLs (and RabbitMQ's) for the deploy scripts: ``python -m deploy.redisurl VERB URL``.
Its own little RESP, so it works before the virtualenv exists."""
from __future__ import annotations

import argparse
import socket
import ssl
import sys
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from common.broker import is_amqp, is_redis
from common.config import value, with_redis_password
from deploy import amqpurl
from deploy.amqpurl import LOCAL_HOSTS

__all__ = ["LOCAL_HOSTS", "RedisAddress", "is_local", "parse", "ping", "wait", "with_db"]

@dataclass(frozen=True)
class RedisAddress:
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool


def parse(url: str) -> RedisAddress:
    """Split a Redis URL; ValueError for another broker's, a socket's, or a bad port or db."""
    if not is_redis(url):
        raise ValueError(f"expected a redis:// or rediss:// URL, got {url!r}")
    parts = urlsplit(url)
    if parts.scheme.lower() == "unix":
        raise ValueError(f"the stack's Redis needs a host and port (redis://host:port/db), not {url!r}")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"bad port in Redis URL {url!r}") from None
    db = parts.path.lstrip("/") or "0"
    if not db.isdigit():
        raise ValueError(f"the path of a Redis URL is a db number, got {url!r}")
    return RedisAddress(parts.hostname or "127.0.0.1", port, int(db),
                        unquote(parts.username) if parts.username else None,
                        unquote(parts.password) if parts.password else None, parts.scheme.lower() == "rediss")


def with_db(url: str, db: int) -> str:
    """The same URL selecting another database number."""
    if db < 0:
        raise ValueError(f"db must be >= 0, got {db}")
    parse(url)
    return urlunsplit(urlsplit(url)._replace(path=f"/{db}"))


def is_local(url: str) -> bool:
    """True when the URL's host is this machine (a server we could start)."""
    return parse(url).host in LOCAL_HOSTS


def _command(*args: str) -> bytes:
    words = [arg.encode() for arg in args]
    return b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(word), word) for word in words)


def _reply(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\r\n") and (chunk := sock.recv(1)):
        line += chunk
    return line.rstrip(b"\r\n")


def ping(url: str, timeout: float = 1.0) -> bool:
    """True when a Redis at ``url`` answers PONG (after AUTH when the URL has a password)."""
    address = parse(url)
    try:
        with socket.create_connection((address.host, address.port), timeout=timeout) as raw:
            sock = ssl.create_default_context().wrap_socket(raw, server_hostname=address.host) \
                if address.tls else raw
            if address.password is not None:
                sock.sendall(_command("AUTH", *filter(None, (address.username, address.password))))
                if not _reply(sock).startswith(b"+OK"):
                    return False
            sock.sendall(_command("PING"))
            return _reply(sock) == b"+PONG"
    except OSError:
        return False


def wait(url: str, timeout: float, interval: float = 0.1) -> bool:
    """Ping until Redis answers or ``timeout`` seconds pass."""
    from deploy.stack import NotReadyError, wait_until  # deploy.stack imports this module

    try:
        wait_until(lambda: None if ping(url) else f"no PONG from {url}", timeout, interval=interval)
    except NotReadyError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.redisurl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in ("ping", "port", "is-local", "with-db", "wait"):
        sub.add_parser(verb).add_argument("url")
    sub.choices["with-db"].add_argument("db", type=int)
    sub.choices["wait"].add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    try:
        if is_amqp(args.url) and args.verb in {"ping", "is-local"}:
            return 0 if (amqpurl.ping if args.verb == "ping" else amqpurl.is_local)(args.url) else 1
        if args.verb in {"ping", "wait"}:
            # The password of the Redis `make up` starts comes from the environment, not the URL.
            url = with_redis_password(args.url, value("REDIS_PASSWORD"))
            return 0 if (ping(url) if args.verb == "ping" else wait(url, args.timeout)) else 1
        if args.verb == "is-local":
            return 0 if is_local(args.url) else 1
        print(parse(args.url).port if args.verb == "port" else with_db(args.url, args.db))
    except ValueError as exc:
        print(f"deploy.redisurl: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
