"""CPU time of named process trees over a measured window, and per request.

A :class:`Sampler` reads ``utime + stime`` (every thread of a process, in clock ticks) from
``/proc/<pid>/stat`` for each named root process and all its descendants, every ``interval``
seconds, in a background thread. Each tree's count is the sum over every process ever seen in
it, at its last reading: a process that exits keeps what it used, and a reaped child is not
counted twice through its parent's ``cutime`` (left out for that reason). With ``machine=True``
each sample also holds :data:`MACHINE`, the busy CPU seconds of the whole machine (``/proc/stat``),
so what other processes took during a window shows too. :func:`window` turns
the samples into CPU seconds between two wall-clock instants (linear between samples); per request, they
are divided by ``loadtest.results.RunRecord.cpu_ms``, the one definition.

Linux only; nothing here imports the project.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

__all__ = ["CLOCK_TICKS", "MACHINE", "ProcStat", "Sample", "Sampler", "TreeCounter", "at", "descendants",
           "machine_busy_seconds", "parse_stat", "read_stats", "window"]

logger = logging.getLogger(__name__)

#: Clock ticks per second, the unit of ``/proc/<pid>/stat``'s CPU times.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: Seconds between samples: short enough that interpolating the window's ends costs little.
DEFAULT_INTERVAL_S = 0.25
#: The sample name of the whole machine's busy CPU seconds (every process, every core).
MACHINE = "machine"
#: Busy fields of ``/proc/stat``'s ``cpu`` line (guest time is already in user): user, nice, system,
#: irq, softirq, steal; idle and iowait are not busy.
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


@dataclass(frozen=True)
class ProcStat:
    """What the accounting needs from one ``/proc/<pid>/stat`` line."""

    pid: int
    ppid: int
    start_ticks: int  #: start time after boot: with the pid, names one process even if pids are reused
    cpu_ticks: int  #: utime + stime, every thread of the process


def parse_stat(text: str) -> ProcStat:
    """Parse a ``/proc/<pid>/stat`` line. The command name (2nd field) is in brackets and may hold
    spaces and ``)``, so the fields after it are counted from the last ``)``."""
    head, sep, tail = text.rpartition(")")
    if not sep:
        raise ValueError(f"not a /proc/<pid>/stat line: {text[:80]!r}")
    fields = tail.split()  # fields[0] is field 3 (state) of proc(5)
    if len(fields) < 20:
        raise ValueError(f"/proc/<pid>/stat line with {len(fields) + 2} fields: {text[:80]!r}")
    return ProcStat(pid=int(head.split("(", 1)[0]), ppid=int(fields[1]), start_ticks=int(fields[19]),
                    cpu_ticks=int(fields[11]) + int(fields[12]))


def read_stats(proc: Path = Path("/proc")) -> dict[int, ProcStat]:
    """Every process readable under ``proc``, by pid (processes that exit while read are skipped)."""
    stats: dict[int, ProcStat] = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"{entry.path}/stat") as fh:
                stat = parse_stat(fh.read())
        except (OSError, ValueError):
            continue
        stats[stat.pid] = stat
    return stats


def machine_busy_seconds(stat_text: str) -> float:
    """Busy CPU seconds of every core since boot, from the text of ``/proc/stat``."""
    for line in stat_text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            return sum(values[i] for i in _BUSY_FIELDS if i < len(values)) / CLOCK_TICKS
    raise ValueError("no aggregate 'cpu' line in /proc/stat")


def descendants(parents: Mapping[int, int], root: int) -> set[int]:
    """``root`` and every process below it, from a pid -> parent pid map (empty when root is gone)."""
    if root not in parents:
        return set()
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class TreeCounter:
    """CPU seconds of one process tree: every process ever seen in it, each at its last reading."""

    def __init__(self, root: int) -> None:
        if root < 1:
            raise ValueError(f"root must be a pid (>= 1), got {root}")
        self.root = root
        self._ticks: dict[tuple[int, int], int] = {}  #: (pid, start_ticks) -> last utime + stime

    def update(self, stats: Mapping[int, ProcStat]) -> float:
        """Read the tree's processes from ``stats`` (:func:`read_stats`); the tree's CPU seconds so far."""
        for pid in descendants({p: s.ppid for p, s in stats.items()}, self.root):
            stat = stats[pid]
            key = (pid, stat.start_ticks)
            self._ticks[key] = max(self._ticks.get(key, 0), stat.cpu_ticks)
        return self.seconds

    @property
    def seconds(self) -> float:
        """CPU seconds counted so far."""
        return sum(self._ticks.values()) / CLOCK_TICKS


@dataclass(frozen=True)
class Sample:
    """CPU seconds of each named tree at wall-clock time ``t`` (``time.time()``)."""

    t: float
    seconds: Mapping[str, float]


def at(samples: Sequence[Sample], name: str, t: float) -> float | None:
    """Tree ``name``'s CPU seconds at ``t``, linear between the samples around it and held flat
    before the first and after the last; None when no sample has ``name``."""
    points = [(s.t, s.seconds[name]) for s in samples if name in s.seconds]
    if not points:
        return None
    if t <= points[0][0]:
        return points[0][1]
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return points[-1][1]


def window(samples: Sequence[Sample], start: float, end: float) -> dict[str, float]:
    """CPU seconds each tree used between wall-clock ``start`` and ``end``."""
    if end < start:
        raise ValueError(f"window ends ({end}) before it starts ({start})")
    names = dict.fromkeys(name for s in samples for name in s.seconds)
    out = {}
    for name in names:
        before, after = at(samples, name, start), at(samples, name, end)
        if before is not None and after is not None:
            out[name] = max(after - before, 0.0)
    return out


class Sampler:
    """Samples named process trees every ``interval`` seconds in a background thread.

    Use it as a context manager: one sample on entry, one on exit, and every ``interval``
    between; :meth:`track` adds a tree while it runs (a load generator started inside).
    """

    def __init__(self, roots: Mapping[str, int] | None = None, interval: float = DEFAULT_INTERVAL_S,
                 proc: Path = Path("/proc"), machine: bool = False) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, e.g. {DEFAULT_INTERVAL_S}; got {interval}")
        self.interval = interval
        self.proc = proc
        self.machine = machine  #: also sample the whole machine's busy CPU as MACHINE
        self.samples: list[Sample] = []
        self._counters: dict[str, TreeCounter] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for name, pid in (roots or {}).items():
            self.track(name, pid)

    def track(self, name: str, pid: int) -> None:
        """Count the tree under ``pid`` as ``name`` from the next sample on."""
        with self._lock:
            if name in self._counters or name == MACHINE:
                raise ValueError(f"already tracking a tree named {name!r}")
            self._counters[name] = TreeCounter(pid)
        self.sample()

    def sample(self) -> Sample:
        """Read every tracked tree now and keep the sample."""
        stats = read_stats(self.proc)
        busy = machine_busy_seconds((self.proc / "stat").read_text()) if self.machine else None
        with self._lock:
            seconds = {name: c.update(stats) for name, c in self._counters.items()}
            sample = Sample(time.time(), seconds if busy is None else {**seconds, MACHINE: busy})
            self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> Sampler:
        """Take a first sample and start sampling in the background."""
        self.sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling, after a last sample."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.sample()

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
