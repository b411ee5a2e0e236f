"""Read and ping RabbitMQ (AMQP 0-9-1) URLs, standard library only (the scripts: ``deploy.redisurl``)."""
from __future__ import annotations

import socket
import ssl
from urllib.parse import unquote, urlsplit

from common.broker import is_amqp

#: Hosts that are this machine.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})

__all__ = ["is_local", "parse", "ping"]

#: AMQP 0-9-1's protocol header; a broker answers with a method frame (type 1).
_HEADER = b"AMQP\x00\x00\x09\x01"


def parse(url: str) -> tuple[str, int, str]:
    """(host, port, vhost) of an AMQP URL; ValueError for another broker's."""
    if not is_amqp(url):
        raise ValueError(f"expected an amqp:// URL, got {url!r}")
    parts = urlsplit(url)
    port = parts.port or (5671 if parts.scheme.lower() == "amqps" else 5672)
    return parts.hostname or "127.0.0.1", port, unquote(parts.path[1:]) or "/"


def is_local(url: str) -> bool:
    """True when the URL's host is this machine (a server we could start)."""
    return parse(url)[0] in LOCAL_HOSTS


def ping(url: str, timeout: float = 2.0) -> bool:
    """True when an AMQP broker at ``url`` starts the handshake."""
    host, port, _ = parse(url)
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            sock = ssl.create_default_context().wrap_socket(raw, server_hostname=host) \
                if urlsplit(url).scheme.lower() == "amqps" else raw
            sock.sendall(_HEADER)
            return sock.recv(1) == b"\x01"
    except OSError:
        return False
