"""Ping a RabbitMQ (AMQP 0-9-1) URL for the deploy scripts and the tests.

``python -m deploy.amqpurl ping URL`` exits 0 when an AMQP broker at URL
answers the protocol header with ``connection.start``; ``is-local URL`` exits
0 when URL's host is this machine. Standard library only, like
:mod:`deploy.redisurl`, so it works before the virtualenv exists.
"""
from __future__ import annotations

import argparse
import socket
import sys
from urllib.parse import unquote, urlsplit

__all__ = ["DEFAULT_PORT", "is_local", "parse", "ping"]

DEFAULT_PORT = 5672
_SCHEMES = frozenset({"amqp", "pyamqp"})
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: AMQP 0-9-1's protocol header; a broker answers with a method frame (type 1).
_HEADER = b"AMQP\x00\x00\x09\x01"


def parse(url: str) -> tuple[str, int, str]:
    """(host, port, vhost) of an ``amqp://`` URL; ValueError for another scheme."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"expected an amqp:// URL, got {parts.scheme}://...")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORT, vhost


def is_local(url: str) -> bool:
    """True when the URL's host is this machine (a server we could start)."""
    return parse(url)[0] in _LOCAL_HOSTS


def ping(url: str, timeout: float = 2.0) -> bool:
    """True when an AMQP broker at ``url`` starts the handshake."""
    host, port, _ = parse(url)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(_HEADER)
            return sock.recv(1) == b"\x01"
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.amqpurl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in ("ping", "is-local"):
        sub.add_parser(verb).add_argument("url")
    args = parser.parse_args(argv)
    try:
        found = ping(args.url) if args.verb == "ping" else is_local(args.url)
    except ValueError as exc:
        print(f"deploy.amqpurl: {exc}", file=sys.stderr)
        return 2
    return 0 if found else 1


if __name__ == "__main__":
    sys.exit(main())
