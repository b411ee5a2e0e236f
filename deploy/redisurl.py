"""Read, rewrite and ping Redis URLs for the deploy scripts.

``python -m deploy.redisurl ping URL`` exits 0 when a Redis answers PONG at
URL; ``port URL``, ``host URL``, ``is-local URL``, ``with-port URL PORT`` and
``with-db URL DB`` print or test parts of a URL; ``free-port`` prints a TCP
port nobody listens on (:func:`deploy.stack.free_port`); ``wait URL --timeout S``
pings until it answers. ``ping`` and ``wait`` add ``REDIS_PASSWORD`` to a URL
that has no password.

It speaks the few bytes of RESP it needs itself (PING, AUTH) so that it works
before the virtualenv exists.
"""
from __future__ import annotations

import argparse
import socket
import ssl
import sys
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from common.config import value, with_redis_password

__all__ = ["RedisAddress", "is_local", "parse", "ping", "wait", "with_db", "with_port"]

DEFAULT_PORT = 6379
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "[::1]"})


@dataclass(frozen=True)
class RedisAddress:
    """Where a ``redis://`` or ``rediss://`` URL points."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool


def parse(url: str) -> RedisAddress:
    """Split a Redis URL; ValueError for another scheme or a bad port or db."""
    parts = urlsplit(url)
    if parts.scheme not in {"redis", "rediss"}:
        raise ValueError(f"expected a redis:// or rediss:// URL, got {url!r}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"bad port in Redis URL {url!r}") from None
    path = parts.path.lstrip("/")
    if path and not path.isdigit():
        raise ValueError(f"the path of a Redis URL is a db number, got {url!r}")
    return RedisAddress(
        host=parts.hostname or "127.0.0.1",
        port=port,
        db=int(path) if path else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=parts.scheme == "rediss",
    )


def _replace(url: str, *, port: int | None = None, db: int | None = None) -> str:
    address = parse(url)
    parts = urlsplit(url)
    netloc = parts.netloc
    if port is not None:
        if not 0 < port < 65536:
            raise ValueError(f"port must be 1..65535, got {port}")
        userinfo = netloc.rpartition("@")[0]
        host = f"[{address.host}]" if ":" in address.host else address.host
        netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    path = parts.path
    if db is not None:
        if db < 0:
            raise ValueError(f"db must be >= 0, got {db}")
        path = f"/{db}"
    return urlunsplit((parts.scheme, netloc, path, parts.query, parts.fragment))


def with_port(url: str, port: int) -> str:
    """The same URL pointing at another port."""
    return _replace(url, port=port)


def with_db(url: str, db: int) -> str:
    """The same URL selecting another database number."""
    return _replace(url, db=db)


def is_local(url: str) -> bool:
    """True when the URL's host is this machine (a server we could start)."""
    return parse(url).host in _LOCAL_HOSTS


def _command(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read_line(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf.rstrip(b"\r\n")


def ping(url: str, timeout: float = 1.0) -> bool:
    """True when a Redis at ``url`` answers PONG (after AUTH when the URL has a password)."""
    address = parse(url)
    try:
        with socket.create_connection((address.host.strip("[]"), address.port), timeout=timeout) as raw:
            sock: socket.socket = raw
            if address.tls:
                sock = ssl.create_default_context().wrap_socket(raw, server_hostname=address.host)
            if address.password is not None:
                auth = (address.username, address.password) if address.username else (address.password,)
                sock.sendall(_command("AUTH", *auth))
                if not _read_line(sock).startswith(b"+OK"):
                    return False
            sock.sendall(_command("PING"))
            return _read_line(sock) == b"+PONG"
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
    for verb in ("ping", "port", "host", "is-local"):
        sub.add_parser(verb).add_argument("url")
    for verb, arg in (("with-port", "port"), ("with-db", "db")):
        p = sub.add_parser(verb)
        p.add_argument("url")
        p.add_argument(arg, type=int)
    waiter = sub.add_parser("wait")
    waiter.add_argument("url")
    waiter.add_argument("--timeout", type=float, default=10.0)
    sub.add_parser("free-port")
    args = parser.parse_args(argv)
    try:
        if args.verb in {"ping", "wait"}:
            # The password of the Redis `make up` starts comes from the environment, not the URL.
            url = with_redis_password(args.url, value("REDIS_PASSWORD"))
            found = ping(url) if args.verb == "ping" else wait(url, args.timeout)
            return 0 if found else 1
        if args.verb == "is-local":
            return 0 if is_local(args.url) else 1
        if args.verb == "free-port":
            from deploy.stack import free_port

            print(free_port())
        elif args.verb == "port":
            print(parse(args.url).port)
        elif args.verb == "host":
            print(parse(args.url).host)
        elif args.verb == "with-port":
            print(with_port(args.url, args.port))
        elif args.verb == "with-db":
            print(with_db(args.url, args.db))
    except ValueError as exc:
        print(f"deploy.redisurl: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
