"""``python -m deploy.wait_ready [URL]``: wait for the stack's ``/readyz`` (``make up``, ``status``).
Exits 0 once it answers 200, 1 after ``--timeout`` (0: once), 2 once a supervisord program gave up."""
from __future__ import annotations

import argparse
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Sequence
from typing import Any

from common.config import raw, value
from deploy.models import MODEL_PROGRAM_PREFIX
from deploy.stack import NotReadyError, ServiceExitedError, wait_ready

__all__ = ["fatal_programs", "main", "program_states", "ready_url"]


def ready_url() -> str:
    """The local stack's ``/readyz``, on loopback when it listens on every address."""
    host = value("BIND_HOST")
    return f"http://{'127.0.0.1' if host in {'0.0.0.0', '::'} else host}:{value('WEB_PORT')}/readyz"


def program_states(socket_path: str) -> dict[str, str]:
    """``{program: state}`` from the supervisord listening on ``socket_path`` ({} if none answers)."""
    from supervisor.xmlrpc import SupervisorTransport  # installed with the project

    proxy = xmlrpc.client.ServerProxy(
        "http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{socket_path}"))
    try:
        infos: list[dict[str, Any]] = proxy.supervisor.getAllProcessInfo()  # type: ignore[assignment]
    except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
        return {}
    return {str(info["name"]): str(info["statename"]) for info in infos}


def fatal_programs(states: Callable[[], dict[str, str]]) -> str | None:
    """Why to stop waiting: programs that will not run again, but another model's (it costs only itself)."""
    fatal = sorted(f"{name} ({state})" for name, state in states().items()
                   if state in {"FATAL", "EXITED"} and not name.startswith(MODEL_PROGRAM_PREFIX))
    return f"{', '.join(fatal)} stopped and will not restart; see its log" if fatal else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.wait_ready", description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?")
    parser.add_argument("--timeout", type=float, default=float(raw("READY_TIMEOUT")))
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--supervisor-socket")
    args = parser.parse_args(argv)
    if args.timeout < 0 or args.interval <= 0:
        parser.error("--timeout must be >= 0 and --interval > 0")
    url, socket_path = args.url or ready_url(), args.supervisor_socket
    states = (lambda: program_states(socket_path)) if socket_path else dict

    def progress(line: str) -> None:
        running = ", ".join(f"{name} {state}" for name, state in sorted(states().items()))
        print(line + (f" [{running}]" if running else ""), flush=True)

    if args.timeout:
        print(f"==> waiting up to {args.timeout:g}s for {url}", flush=True)
    started = time.monotonic()
    try:
        wait_ready(url, args.timeout, interval=args.interval, progress=progress,
                   give_up=lambda: fatal_programs(states))
    except NotReadyError as exc:
        print(exc, flush=True)
        return 1
    except ServiceExitedError as exc:
        print(f"giving up: {exc}", flush=True)
        return 2
    print(f"ready: {url} answered 200 after {time.monotonic() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
