"""Poll a readiness URL until it answers 200, printing progress.

``python -m deploy.wait_ready URL [--timeout 180] [--supervisor-socket PATH]``
exits 0 once URL answers 200, 1 when the timeout passes first, and 2 as soon
as supervisord reports one of its programs FATAL (it gave up restarting it,
so waiting longer cannot help). ``--timeout 0`` probes once.
"""
from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Probe", "probe", "program_states", "wait"]

#: Bytes of a non-200 body shown in a progress line (``/readyz`` gives its reason there).
_DETAIL_BYTES = 160


@dataclass(frozen=True)
class Probe:
    """One GET: the HTTP status (None when nothing answered) and a short reason."""

    status: int | None
    detail: str

    @property
    def ready(self) -> bool:
        return self.status == 200


def probe(url: str, timeout: float = 3.0) -> Probe:
    """GET ``url`` once."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return Probe(response.status, "")
    except urllib.error.HTTPError as exc:
        body = exc.read(_DETAIL_BYTES).decode("utf-8", "replace")
        return Probe(exc.code, " ".join(body.split()))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Probe(None, str(reason))


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


def wait(
    url: str,
    timeout: float,
    *,
    interval: float = 1.0,
    report_every: float = 5.0,
    states: Callable[[], dict[str, str]] | None = None,
    out: Callable[[str], None] = print,
) -> int:
    """Poll ``url``; return 0 when ready, 1 on timeout, 2 when a program is FATAL."""
    start = time.monotonic()
    next_report = start
    while True:
        result = probe(url)
        elapsed = time.monotonic() - start
        if result.ready:
            out(f"ready: {url} answered 200 after {elapsed:.0f}s")
            return 0
        programs = states() if states else {}
        fatal = sorted(name for name, state in programs.items() if state == "FATAL")
        if fatal:
            out(f"giving up: {', '.join(fatal)} exited repeatedly (FATAL); see its log")
            return 2
        if elapsed >= timeout:
            out(f"not ready after {timeout:.0f}s: {url}: {_describe(result)}")
            return 1
        if time.monotonic() >= next_report:
            running = ", ".join(f"{name} {state}" for name, state in sorted(programs.items()))
            out(f"  waiting {elapsed:3.0f}s/{timeout:.0f}s: {_describe(result)}"
                + (f" [{running}]" if running else ""))
            next_report += report_every
        time.sleep(min(interval, max(0.0, timeout - elapsed)))


def _describe(result: Probe) -> str:
    if result.status is None:
        return f"no answer ({result.detail})"
    return f"{result.status} {result.detail}".strip()


def main(argv: list[str] | None = None) -> int:
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
    states = (lambda: program_states(socket_path)) if socket_path else None
    return wait(args.url, args.timeout, interval=args.interval, states=states,
                out=lambda line: print(line, flush=True))


if __name__ == "__main__":
    sys.exit(main())
