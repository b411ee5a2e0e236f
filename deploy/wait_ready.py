"""Wait for a readiness URL from the shell: ``make up``, ``make status``, ``make loadtest``.

``python -m deploy.wait_ready URL [--timeout 180] [--supervisor-socket PATH]``
exits 0 once URL answers 200, 1 when the timeout passes first, and 2 as soon
as supervisord reports one of its programs FATAL (it gave up restarting it,
so waiting longer cannot help). ``--timeout 0`` probes once. The wait itself
is :func:`deploy.stack.wait_ready`.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from deploy.models import MODEL_PROGRAM_PREFIX
from deploy.stack import NotReadyError, ServiceExitedError, wait_ready

__all__ = ["fatal_programs", "main", "program_states"]

#: supervisord states a program leaves only when started by hand.
_GONE = frozenset({"FATAL", "EXITED"})


def program_states(socket_path: str) -> dict[str, str]:
    """``{program: state}`` from the supervisord listening on ``socket_path`` ({} if none answers)."""
    import xmlrpc.client

    from supervisor.xmlrpc import SupervisorTransport  # installed with the project

    transport = SupervisorTransport(None, None, f"unix://{socket_path}")
    proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
    try:
        infos: list[dict[str, Any]] = proxy.supervisor.getAllProcessInfo()  # type: ignore[assignment]
    except (OSError, xmlrpc.client.Fault, xmlrpc.client.ProtocolError):
        return {}
    return {str(info["name"]): str(info["statename"]) for info in infos}


def fatal_programs(states: Callable[[], dict[str, str]]) -> str | None:
    """Why to stop waiting: the programs that will not run again (supervisord gave up on them,
    FATAL, or they exited as they do when they cannot start, EXITED), if any, but another model's
    workers (``model-<name>-<n>``, ``deploy.models``): one broken model costs only itself."""
    fatal = sorted(f"{name} ({state})" for name, state in states().items()
                   if state in _GONE and not name.startswith(MODEL_PROGRAM_PREFIX))
    return f"{', '.join(fatal)} stopped and will not restart; see its log" if fatal else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.wait_ready", description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds (default 180; 0 probes once)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between probes")
    parser.add_argument("--supervisor-socket",
                        help="stop early when a program under this supervisord is FATAL")
    args = parser.parse_args(argv)
    if args.timeout < 0 or args.interval <= 0:
        parser.error("--timeout must be >= 0 and --interval > 0")
    socket_path = args.supervisor_socket
    states = (lambda: program_states(socket_path)) if socket_path else dict

    def progress(line: str) -> None:
        running = ", ".join(f"{name} {state}" for name, state in sorted(states().items()))
        print(line + (f" [{running}]" if running else ""), flush=True)

    started = time.monotonic()
    try:
        wait_ready(args.url, args.timeout, interval=args.interval, progress=progress,
                   give_up=lambda: fatal_programs(states))
    except NotReadyError as exc:
        print(exc, flush=True)
        return 1
    except ServiceExitedError as exc:
        print(f"giving up: {exc}", flush=True)
        return 2
    print(f"ready: {args.url} answered 200 after {time.monotonic() - started:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
