"""Fault and overload scenarios against a real stack; writes ``docs/reliability.md``.

``python -m loadtest.chaos`` starts a Redis as ``make up`` runs it (AOF, ``REDIS_MAXMEMORY`` with
``noeviction``) and one :class:`~loadtest.stack.Stack` with the production settings, then runs
:data:`PLAN`: the capacity sweep, then each :class:`Scenario` holds a load while it injects its
fault, follows every 202 through ``GET /tasks/<id>`` to a terminal state and checks what came back;
hostile inputs go in between. *Lost* (accepted but never finished, or never answered) is what no
fault may cause; a SIGKILLed worker's messages come back only after the visibility timeout, so the
run waits that long for them. ``--quick`` is a smoke run without SIGKILLs.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import random
import shlex
import signal
import struct
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from kombu import Connection

from common import config
from common.contract import CLASSIFY_BATCH_TASK, CLASSIFY_TASK
from deploy.stack import ROOT, Process, StackError, command, free_port, wait_until, write_redis_config

from .make_corpus import CORPUS_DIR
from .report import describe_machine, fmt, machine_lines, replace_section, table
from .stack import Stack, Variant

__all__ = ["PLAN", "Reply", "Scenario", "StoreCounter", "main", "render", "summarize"]

logger = logging.getLogger("loadtest.chaos")

SECTION = "chaos"
#: Seconds a client pauses after a 503 (impatient: shorter than Retry-After), and a sync request's
#: client-side timeout (above RESULT_TIMEOUT, so the server answers first).
BACKOFF_S, CLIENT_TIMEOUT_S = 0.5, 70.0
#: Visibility timeout + restore interval + slack: how long a killed worker's messages may take.
REDELIVERY_WAIT_S = config.value("BROKER_VISIBILITY_TIMEOUT") + config.value("BROKER_RESTORE_INTERVAL") + 50
#: Settings shown in the report (effective values, defaults included).
SETTINGS = ("MAX_QUEUE_LENGTH", "MAX_SYNC_QUEUE_LENGTH", "MAX_WAITING_REQUESTS", "WEB_THREADS",
            "RESULT_TIMEOUT", "ASYNC_RESULT_TTL", "BROKER_VISIBILITY_TIMEOUT", "BROKER_RESTORE_INTERVAL",
            "REDIS_MAXMEMORY", "WORKER_POOL", "WORKER_CONCURRENCY", "WORKER_PREFETCH_MULTIPLIER",
            "USE_BATCH_PROCESSING")
TERMINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


@dataclass(frozen=True)
class Plan:
    """Durations and sizes of one run."""

    users: tuple[int, ...]
    step_s: float
    amqp_kills: int  #: on RabbitMQ the worker is SIGKILLed at random moments this many times
    overload_s: float
    kills: int
    kill_load_s: float
    restart_load_s: float
    redis_down_s: float


FULL = Plan((1, 2, 4, 8, 16), step_s=10, amqp_kills=20, overload_s=40, kills=4, kill_load_s=45,
            restart_load_s=25, redis_down_s=5)
QUICK = Plan((1, 2, 4), step_s=4, amqp_kills=3, overload_s=10, kills=0, kill_load_s=0, restart_load_s=10,
             redis_down_s=3)


# -- HTTP, load, counting -----------------------------------------------------------------------

@dataclass(frozen=True)
class Reply:
    """One HTTP exchange: status (0: no answer), seconds, Retry-After present, the JSON body's error
    code, task id and state, when it ended (monotonic) and a 200's own ``timings_ms.total`` (s)."""

    status: int
    seconds: float
    retry_after: bool = False
    code: str | None = None
    task_id: str | None = None
    state: str | None = None
    at: float = 0.0
    server_seconds: float | None = None


def call(base: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = CLIENT_TIMEOUT_S) -> Reply:
    """One request on a fresh connection; never raises."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    start = time.monotonic()
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a 413 may close before the body
            conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException):
        return Reply(0, time.monotonic() - start, at=time.monotonic())
    finally:
        conn.close()
    try:
        fields = json.loads(data)
    except ValueError:
        fields = None
    fields = fields if isinstance(fields, dict) else {}
    error, timings = fields.get("error") or {}, fields.get("timings_ms") or {}
    total, end = timings.get("total") if isinstance(timings, dict) else None, time.monotonic()
    return Reply(response.status, end - start, response.getheader("Retry-After") is not None,
                 error.get("code") if isinstance(error, dict) else None, fields.get("task_id"),
                 fields.get("status"), end, total / 1000 if isinstance(total, (int, float)) else None)


def load_photos() -> list[tuple[bytes, str]]:
    """The corpus as (bytes, content type)."""
    return [(p.read_bytes(), "image/png" if p.suffix == ".png" else "image/jpeg")
            for p in sorted(CORPUS_DIR.iterdir()) if p.suffix in {".jpg", ".png"}]


def queued(client: redis.Redis, queue: str) -> int:
    """Tasks waiting in the stack's synchronous queue and its async one."""
    return sum(int(client.llen(name)) for name in (queue, config.async_queue_of(queue)))


@dataclass
class Phase:
    """What one load phase sent and got back, and what Redis held meanwhile."""

    sync: list[Reply] = field(default_factory=list)
    async_: list[Reply] = field(default_factory=list)
    seconds: float = 0.0  #: how long the load ran (requests in flight at the end finish after it)
    ended: float = 0.0  #: monotonic time the load stopped
    used_memory_max: int = 0
    queue_max: int = 0

    def task_ids(self) -> list[str]:
        return [r.task_id for r in list(self.async_) if r.task_id]


@contextlib.contextmanager
def running_load(run: Run, users: int, flood_rate: float = 0.0) -> Iterator[Phase]:
    """Closed-loop sync users and an open-loop async flood, until the block ends."""
    phase, stop, url = Phase(), threading.Event(), run.stack.url

    def user(index: int) -> None:
        rng = random.Random(index)
        while not stop.is_set():
            data, kind = rng.choice(run.photos)
            phase.sync.append(reply := call(url, "POST", "/predict", data, {"Content-Type": kind}))
            if reply.status == 503:
                stop.wait(BACKOFF_S * rng.uniform(0.5, 1.5))

    def flooder(index: int, threads: int) -> None:
        rng, interval = random.Random(1000 + index), threads / flood_rate
        next_at = time.monotonic() + rng.uniform(0, interval)
        while not stop.wait(max(0.0, next_at - time.monotonic())):
            data, kind = rng.choice(run.photos)
            phase.async_.append(call(url, "POST", "/predict?async=true", data, {"Content-Type": kind}))
            next_at = max(next_at + interval, time.monotonic() - interval)  # open loop, no catch-up burst

    def sampler() -> None:
        while not stop.wait(0.5):
            with contextlib.suppress(redis.RedisError):  # Redis is down in the restart scenario
                used = int(run.client.info("memory")["used_memory"])
                phase.used_memory_max = max(phase.used_memory_max, used)
                phase.queue_max = max(phase.queue_max, queued(run.client, run.stack.queue))

    flood = min(16, int(flood_rate // 10) + 1) if flood_rate > 0 else 0
    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    threads += [threading.Thread(target=flooder, args=(i, flood), daemon=True) for i in range(flood)]
    threads.append(threading.Thread(target=sampler, daemon=True))
    start = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        yield phase
    finally:
        stop.set()
        phase.ended = time.monotonic()
        phase.seconds = phase.ended - start
        for thread in threads:
            thread.join(CLIENT_TIMEOUT_S + 5)


def p95(values: Sequence[float]) -> float | None:
    """Nearest rank."""
    return sorted(values)[min(len(values) - 1, int(0.95 * len(values)))] if values else None


def _wait(check: Callable[[], str | None], timeout: float, interval: float = 1.0, **options: Any) -> None:
    """:func:`wait_until`, logging instead of raising: what is still missing is counted and reported."""
    try:
        wait_until(check, timeout, interval=interval, **options)
    except (StackError, redis.RedisError) as exc:
        logger.warning("%s", exc)


def settle(stack: Stack, client: redis.Redis, task_ids: Sequence[str], timeout: float) -> Counter[str]:
    """Wait (on Redis, cheaply) until every task has a result, then ask ``/tasks/<id>`` for each."""
    pending = set(task_ids)

    def check() -> str | None:
        for chunk in [sorted(pending)[i:i + 500] for i in range(0, len(pending), 500)]:
            metas = client.mget([f"celery-task-meta-{task_id}" for task_id in chunk])
            pending.difference_update(t for t, m in zip(chunk, metas)
                                      if m is not None and json.loads(m).get("status") in TERMINAL)
        return f"{len(pending)} accepted tasks not finished" if pending else None

    _wait(check, timeout, progress=logger.info, report_every=15)
    with ThreadPoolExecutor(8) as pool:  # the API's word on each, not Redis'
        replies = list(pool.map(lambda t: call(stack.url, "GET", f"/tasks/{t}", timeout=10), task_ids))
    return Counter(r.state if r.status == 200 and r.state else f"HTTP {r.status}" for r in replies)


def summarize(name: str, load: str, faults: str, phase: Phase, states: Counter[str]) -> dict[str, Any]:
    """A scenario's row: counts by outcome (sync by status, async by final task state)."""
    replies = phase.sync + phase.async_
    statuses = Counter(r.status for r in replies)
    accepted_sync = [r for r in phase.sync if r.status in (200, 504)]
    done = sum(1 for r in phase.sync if r.status == 200 and r.at <= phase.ended)
    return {
        "scenario": name, "load": load, "faults": faults, "seconds": round(phase.seconds, 1),
        "requests": len(replies), "accepted": statuses[200] + statuses[202] + statuses[504],
        "completed": statuses[200] + states["SUCCESS"],
        "failed": statuses[504] + states["FAILURE"] + states["REVOKED"], "rejected_503": statuses[503],
        "rejected_503_without_retry_after": sum(1 for r in replies if r.status == 503 and not r.retry_after),
        "other": {str(s): n for s, n in sorted(statuses.items()) if s not in (0, 200, 202, 503, 504)},
        "lost": statuses[0] + sum(n for s, n in states.items() if s not in TERMINAL),
        "p95_s": p95([r.seconds for r in accepted_sync]),
        "server_p95_s": p95([r.server_seconds for r in accepted_sync if r.server_seconds is not None]),
        "completed_per_s": round(done / phase.seconds if phase.seconds else 0.0, 2),
        "redis_used_memory_max_mib": round(phase.used_memory_max / 2**20, 1), "queue_max": phase.queue_max,
    }


class StoreCounter:
    """Task id -> terminal results stored since ``start`` (Celery's Redis backend publishes each store)."""

    def __init__(self, client: redis.Redis) -> None:
        self.counts: Counter[str] = Counter()
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)

    def start(self) -> StoreCounter:
        self._pubsub.psubscribe(**{"celery-task-meta-*": self._stored})
        self._thread = self._pubsub.run_in_thread(sleep_time=0.2, daemon=True)
        return self

    def close(self) -> None:
        self._thread.stop()  # which closes the subscription
        self._thread.join(5)

    def twice(self) -> list[str]:
        """Tasks whose terminal result was stored more than once."""
        return sorted(task_id for task_id, count in self.counts.items() if count > 1)

    def _stored(self, message: dict[str, Any]) -> None:
        if json.loads(message["data"]).get("status") in TERMINAL:
            self.counts[message["channel"].decode().removeprefix("celery-task-meta-")] += 1


# -- the run and its scenarios ------------------------------------------------------------------

@dataclass
class Run:
    """The stack, the Redis this run started, and what the plan found."""

    stack: Stack
    client: redis.Redis
    redis: Process
    plan: Plan
    amqp: bool  #: the broker is a RabbitMQ (results stay on the Redis)
    photos: list[tuple[bytes, str]] = field(default_factory=load_photos)
    scenarios: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    bad_inputs: list[dict[str, Any]] = field(default_factory=list)
    capacity_users: int = 1
    capacity_rps: float = 1.0
    capacity_p95: float | None = None

    def check(self, what: str, value: str, ok: bool, gating: bool = True) -> None:
        self.checks.append({"check": what, "value": value, "ok": ok, "gating": gating})


#: What a fault returns: ``faults`` (the row's text) and whatever its checks need.
Facts = dict[str, Any]
#: A check: (run, phase, row, facts) -> (what was measured, met), or None when it does not apply.
Check = Callable[[Run, Phase, dict[str, Any], Facts], tuple[str, bool] | None]


@dataclass(frozen=True)
class Scenario:
    """``users`` × the capacity's users and an async flood of ``flood`` × its throughput, held while
    ``fault`` runs; then every task accepted is followed to its end and each of ``checks`` (name ->
    check, gating unless the name ends with ``(reported)``) judges the row. ``skip``: why not here."""

    name: str
    load: str  #: the row's "load held", formatted with users, sent (async/s) and rate (the target)
    users: int
    flood: float
    fault: Callable[[Run, Phase], Facts]
    checks: dict[str, Check]
    skip: Callable[[Run], str | None]

    def __call__(self, run: Run) -> None:
        if reason := self.skip(run):
            run.scenarios.append({"scenario": self.name, "not_run": reason})
            return
        users, rate = self.users * run.capacity_users, self.flood * run.capacity_rps
        with running_load(run, users, rate) as phase:
            facts = self.fault(run, phase)
        states = settle(run.stack, run.client, phase.task_ids(), REDELIVERY_WAIT_S)
        load = self.load.format(users=users, sent=len(phase.async_) / phase.seconds, rate=rate)
        run.scenarios.append(row := summarize(self.name, load, facts["faults"], phase, states))
        for what, check in self.checks.items():
            if (found := check(run, phase, row, facts)) is not None:
                run.check(f"{self.name}: {what.removesuffix(' (reported)')}", *found,
                          gating=not what.endswith("(reported)"))


def capacity(run: Run) -> None:
    """Closed-loop users 1, 2, 4, ...: the smallest count within 10 % of the best throughput."""
    def load(seconds: float, users: int) -> Phase:
        with running_load(run, users) as phase:
            time.sleep(seconds)
        return phase

    load(run.plan.step_s / 2, users=2)  # warm-up, dropped
    rows = {u: summarize("capacity", "", "none", load(run.plan.step_s, u), Counter()) for u in run.plan.users}
    best = max(row["completed_per_s"] for row in rows.values())
    run.capacity_users, row = next((u, r) for u, r in rows.items() if r["completed_per_s"] >= 0.9 * best)
    run.capacity_rps, run.capacity_p95 = row["completed_per_s"], row["p95_s"]
    row["load"] = f"{run.capacity_users} closed-loop users (sweep {', '.join(map(str, run.plan.users))})"
    run.scenarios.append(row)


def _hold(run: Run, phase: Phase) -> Facts:
    time.sleep(run.plan.overload_s)
    return {"faults": "none", "maxmemory": int(run.client.info("memory").get("maxmemory", 0))}


def _restart(proc: Process) -> Process:
    """The same command again (a :class:`Process` starts once)."""
    return Process(proc.argv, log_path=proc.log_path, env=proc.env, cwd=proc.cwd, name=proc.name).start()


def _kill_workers(run: Run, phase: Phase) -> Facts:
    """On Redis ``plan.kills`` SIGKILLs, each once the worker holds work (unacknowledged messages); on
    RabbitMQ, whose deliveries come back at once, ``plan.amqp_kills`` at random moments."""
    stores = StoreCounter(run.client).start()
    rng, held = random.Random(8), 0
    kills = run.plan.amqp_kills if run.amqp else run.plan.kills
    gap = run.plan.step_s if run.amqp else run.plan.kill_load_s / (kills + 1)
    for kill in range(kills):
        time.sleep(gap * rng.uniform(0.5, 1.0))  # load between faults
        if not run.amqp:  # messages of workers killed before stay unacked for the visibility timeout
            _wait(lambda: None if run.client.hlen("unacked") > held else "no work held", 60,  # noqa: B023
                  interval=0.05)
        worker = run.stack.services["worker"]
        worker.signal(signal.SIGKILL)
        worker.wait(30)
        held = run.client.hlen("unacked")
        run.stack.services["worker"] = _restart(worker)
        logger.info("worker kill %d/%d", kill + 1, kills)
    time.sleep(gap)
    moments = "at random moments" if run.amqp else "each while it held work"
    return {"faults": f"{kills} x SIGKILL {moments}, replacement started each time", "stores": stores}


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _restart_redis(run: Run, phase: Phase) -> Facts:
    """SHUTDOWN (which fsyncs the AOF), a pause, the same command again; no other process restarted."""
    pids = {name: s.pid for name, s in run.stack.services.items()}
    time.sleep(run.plan.restart_load_s / 3)
    before, down_at = phase.task_ids(), time.monotonic()
    with contextlib.suppress(redis.RedisError):  # the connection closes as the server exits
        run.client.shutdown()
    run.redis.wait(30)
    time.sleep(run.plan.redis_down_s)  # the outage is the fault under test
    run.redis, up_at = _restart(run.redis), time.monotonic()
    wait_until(lambda: None if _pings(run.client) else "Redis not answering", 30, interval=0.1)
    time.sleep(run.plan.restart_load_s * 2 / 3)
    return {"faults": f"SHUTDOWN, down {up_at - down_at:.1f} s, same command again", "pids": pids,
            "before": before, "down_at": down_at, "up_at": up_at}


def _lost(run: Run, phase: Phase, row: dict[str, Any], facts: Facts) -> tuple[str, bool]:
    return f"lost {row['lost']}", row["lost"] == 0


def _statuses(run: Run, phase: Phase, row: dict[str, Any], facts: Facts) -> tuple[str, bool]:
    seen = sorted({r.status for r in phase.sync + phase.async_})
    without = row["rejected_503_without_retry_after"]
    return f"statuses {seen}, {without} 503 without Retry-After", set(seen) <= {200, 202, 503} and not without


def _memory(run: Run, phase: Phase, row: dict[str, Any], facts: Facts) -> tuple[str, bool]:
    return (f"used_memory max {row['redis_used_memory_max_mib']} MiB, maxmemory "
            f"{facts['maxmemory'] / 2**20:.0f} MiB, queue max {row['queue_max']}",
            0 < phase.used_memory_max <= facts["maxmemory"])


def _p95_within(run: Run, phase: Phase, row: dict[str, Any], facts: Facts) -> tuple[str, bool] | None:
    if run.capacity_p95 is None or row["p95_s"] is None:
        return None
    x = row["p95_s"] / run.capacity_p95
    return f"{row['p95_s']:.3f} s vs {run.capacity_p95:.3f} s (x{x:.1f})", x <= 2.0


def _twice(run: Run, phase: Phase, row: dict[str, Any], facts: Facts) -> tuple[str, bool]:
    facts["stores"].close()  # after every redelivered task finished
    counts, twice = facts["stores"].counts, facts["stores"].twice()
    return (f"{len(counts)} results stored, {len(twice)} twice{': ' + ' '.join(twice[:5]) if twice else ''}",
            not twice)


def _down(run: Run, phase: Phase, row: dict[str, Any], facts: Facts) -> tuple[str, bool]:
    during = [r for r in phase.sync + phase.async_
              if facts["down_at"] <= r.at - r.seconds and r.at <= facts["up_at"]]
    return (f"{len(during)} requests while down: {dict(Counter(r.status for r in during))}",
            bool(during) and all(r.status == 503 and r.retry_after for r in during))


def _recovered(run: Run, phase: Phase, row: dict[str, Any], facts: Facts) -> tuple[str, bool]:
    # Sync requests in flight at the restart may wait for their deadline (their messages come back after
    # the visibility timeout): recovery is the first request sent after Redis was back that was taken.
    first = min((r.at for r in phase.sync + phase.async_ if r.status in (200, 202)
                 and r.at - r.seconds > facts["up_at"]), default=None)
    same = facts["pids"] == {n: s.pid for n, s in run.stack.services.items()}
    after = "never" if first is None else f"{first - facts['up_at']:.1f} s"
    return f"first request taken {after} after Redis was back", first is not None and same


def _finished(run: Run, phase: Phase, row: dict[str, Any], facts: Facts) -> tuple[str, bool]:
    states, before = settle(run.stack, run.client, facts["before"], 5), facts["before"]
    return f"{states['SUCCESS']}/{len(before)} SUCCESS, {dict(states)}", states["SUCCESS"] == len(before)


def _redis_broker(run: Run) -> str | None:
    return "RabbitMQ run (--amqp-url): a Redis broker's scenario" if run.amqp else None


def _kills_planned(run: Run) -> str | None:
    if run.amqp or run.plan.kills:
        return None
    return f"--quick (redelivery waits for the {config.value('BROKER_VISIBILITY_TIMEOUT')} s visibility "\
        "timeout)"


# -- bad inputs ---------------------------------------------------------------------------------

def _png(width: int, height: int, rows: Callable[[], Iterator[bytes]] | None = None) -> bytes:
    """An 8-bit RGBA PNG of ``width`` x ``height`` with ``rows``, or an empty IDAT when None."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    data = b""
    if rows is not None:
        squeeze = zlib.compressobj(9)
        data = b"".join(squeeze.compress(row) for row in rows()) + squeeze.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _bomb() -> bytes:
    """RGBA zeros just under the pixel limit: tiny compressed, huge decoded."""
    row = bytes(1 + 6324 * 4)
    return _png(6324, 6324, lambda: iter([row] * 6324))


def _bad_exif(jpeg: bytes) -> bytes:
    noise = bytes(random.Random(3).randrange(256) for _ in range(200))
    junk = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + noise
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(junk) + 2) + junk + jpeg[2:]


def http_bad_inputs(photos: Sequence[tuple[bytes, str]]) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(kind, path, body, headers) of each hostile request."""
    jpeg = next(data for data, kind in photos if kind == "image/jpeg")
    as_jpeg, as_png = {"Content-Type": "image/jpeg"}, {"Content-Type": "image/png"}
    no_file = b'--b\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n3\r\n--b--\r\n'
    cases = [("empty body", "/predict", b"", as_jpeg),
             ("truncated JPEG", "/predict", jpeg[: len(jpeg) * 2 // 5], as_jpeg),
             ("truncated JPEG", "/predict", jpeg[:200], as_jpeg),
             ("wrong format", "/predict", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", as_png),
             ("wrong format", "/predict", b"<svg xmlns='http://www.w3.org/2000/svg'/>", as_png),
             ("huge pixel-count PNG header", "/predict", _png(100_000, 100_000), as_png),
             ("huge pixel-count PNG header", "/predict", _png(7000, 7000), as_png),
             ("decompression bomb PNG", "/predict", _bomb(), as_png),
             ("malformed EXIF", "/predict", _bad_exif(jpeg), as_jpeg),
             ("wrong content type", "/predict", jpeg, {"Content-Type": "application/json"}),
             ("wrong content type", "/predict", no_file, {"Content-Type": "multipart/form-data; boundary=b"}),
             ("wrong content type", "/predict", jpeg, {"Content-Type": "multipart/form-data; boundary=x"}),
             ("oversize body", "/predict", bytes(11 * 2**20), as_jpeg),
             ("unknown task id", f"/tasks/{uuid.uuid4()}", b"", {}),
             ("unknown task id", "/tasks/..%2F..%2Fetc", b"", {})]
    cases += [("bad top_k", f"/predict?top_k={v}", jpeg, as_jpeg)
              for v in ("0", "1001", "abc", "-1", "1e3", "9" * 40)]
    cases += [("bad timeout", f"/predict?timeout={v}", jpeg, as_jpeg) for v in ("-1", "nan", "abc", "0")]
    return cases + [("bad timeout", "/predict", jpeg, {**as_jpeg, header: value})
                    for header, value in (("Request-Timeout", "inf"), ("X-Request-Timeout", "1e999"))]


#: Raw messages put straight into the queue: (kind, task name, body, serializer).
QUEUE_BAD_INPUTS: tuple[tuple[str, str, Any, str], ...] = (
    ("wrong shape: scalar body", CLASSIFY_TASK, 42, "json"),
    ("wrong shape: dict body", CLASSIFY_BATCH_TASK, {"image": 1}, "json"),
    ("wrong shape: too few parts", CLASSIFY_TASK, [["x"], {}], "json"),
    ("wrong shape: three arguments", CLASSIFY_BATCH_TASK, [["x", 5, 6], {}, {}], "json"),
    ("wrong types: top_k text", CLASSIFY_TASK, [["x", "5"], {}, {}], "json"),
    ("huge body: 4 MiB of junk image", CLASSIFY_TASK, [[b"\x00" * 4 * 2**20, 5], {}, {}], "msgpack"),
    ("unknown task name", "workers.no_such_task", [[b"x", 5], {}, {}], "msgpack"),
    ("pickle-serialized body", CLASSIFY_TASK, [[b"x", 5], {}, {}], "pickle"),
)


def bad_inputs(run: Run) -> None:
    """Hostile uploads over HTTP, malformed messages into the queue; the worker must keep serving."""
    worker, queue = run.stack.services["worker"], run.stack.queue
    by_kind: dict[str, Counter[str]] = {}
    for kind, path, body, headers in http_bad_inputs(run.photos):
        method = "GET" if path.startswith("/tasks") else "POST"
        reply = call(run.stack.url, method, path, body or None, headers)
        by_kind.setdefault(kind, Counter())[f"{reply.status or 'no answer'} {reply.code or ''}".strip()] += 1
    run.bad_inputs += [{"where": "HTTP", "kind": kind, "count": sum(outcomes.values()),
                        "outcomes": dict(outcomes), "ok": all(o[0] in "1234" for o in outcomes)}
                       for kind, outcomes in by_kind.items()]
    ids = {kind: str(uuid.uuid4()) for kind, *_ in QUEUE_BAD_INPUTS}
    # kombu, not a Celery app: celeryconfig picks its transport for this process' broker, not the stack's.
    broker = Connection(worker.env["CELERY_BROKER_URL"])
    with broker.Producer() as producer:
        for kind, task, body, serializer in QUEUE_BAD_INPUTS:
            producer.publish(body, routing_key=queue, serializer=serializer,
                             headers={"task": task, "id": ids[kind], "lang": "py"})

    def drained() -> str | None:
        if run.amqp:
            left = sum(int(broker.default_channel.queue_declare(queue=name, passive=True).message_count)
                       for name in (queue, config.async_queue_of(queue)))
        else:
            left = queued(run.client, queue)
        return "messages still queued" if left else None

    _wait(drained, 30, interval=0.2)
    _wait(lambda: None if all(run.client.exists(f"celery-task-meta-{i}") for i in ids.values())
          else "not every injected message has a result", 5, interval=0.2)  # a dropped one never gets one
    data, kind = run.photos[0]  # once the bad messages are out of the queue and its bound
    good = call(run.stack.url, "POST", "/predict", data, {"Content-Type": kind})
    for kind, task_id in ids.items():
        meta = run.client.get(f"celery-task-meta-{task_id}")
        state = json.loads(meta)["status"] if meta else "no result: message dropped"
        run.bad_inputs.append({"where": "queue", "kind": kind, "count": 1, "outcomes": {state: 1},
                               "ok": state in ("FAILURE", "no result: message dropped")})
    alive, left = worker.exited() is None and run.stack.services["worker"] is worker, drained()
    broker.release()
    run.check("bad inputs: no 5xx and no unanswered request",
              f"{sum(b['count'] for b in run.bad_inputs)} tried", all(b["ok"] for b in run.bad_inputs))
    run.check("bad inputs: the worker kept serving", f"a good upload got {good.status} afterwards; the "
              f"same worker process {'is' if alive else 'is not'} running, queue "
              f"{'drained' if left is None else 'not drained'}", good.status == 200 and alive)


_BOTH = "{users} closed-loop users + async {sent:.0f} req/s"
#: What a run does, in order.
PLAN: tuple[Callable[[Run], None], ...] = (
    capacity,
    Scenario("overload (4x)", "{users} closed-loop users + async flood of {sent:.0f} req/s (target "
             "{rate:.0f})", 4, 4.0, _hold, {
                 "only 200, 202 and 503 with Retry-After": _statuses, "Redis memory bounded": _memory,
                 "p95 of the accepted within 2x the p95 at capacity (reported)": _p95_within}, _redis_broker),
    bad_inputs,
    Scenario("worker SIGKILL", _BOTH, 1, 0.5, _kill_workers,
             {"nothing accepted lost": _lost, "no result stored twice": _twice}, _kills_planned),
    Scenario("Redis restart", _BOTH, 1, 0.5, _restart_redis, {
        "503 with Retry-After while down": _down, "recovered without restarting web or worker": _recovered,
        "every 202 accepted before the restart finished": _finished, "nothing accepted lost": _lost},
             _redis_broker),
)


# -- report -------------------------------------------------------------------------------------

def render(result: dict[str, Any]) -> str:
    """The report section from a run's JSON-able result."""
    head = ["scenario", "load held", "faults injected", "s", "requests", "accepted", "completed",
            "expired or failed", "rejected 503", "other", "lost", "p95 of accepted sync (s)",
            "its server-side p95 (s)", "sync 200/s", "Redis used_memory max (MiB)", "queue max"]
    rows = []
    for s in result["scenarios"]:
        if "not_run" in s:
            rows.append([s["scenario"], f"not run: {s['not_run']}", *["—"] * (len(head) - 2)])
            continue
        without = s["rejected_503_without_retry_after"]
        rows.append([s["scenario"], s["load"], s["faults"], fmt(s["seconds"]), str(s["requests"]),
                     str(s["accepted"]), str(s["completed"]), str(s["failed"]),
                     f"{s['rejected_503']}{f' ({without} without Retry-After)' if without else ''}",
                     ", ".join(f"{k}: {v}" for k, v in s["other"].items()) or "0", f"**{s['lost']}**",
                     fmt(s["p95_s"], 3), fmt(s.get("server_p95_s"), 3), fmt(s["completed_per_s"]),
                     fmt(s["redis_used_memory_max_mib"]), str(s["queue_max"])])
    bad = [[b["where"], b["kind"], str(b["count"]), ", ".join(f"{k} × {v}" for k, v in b["outcomes"].items()),
            "yes" if b["ok"] else "**no**"] for b in result["bad_inputs"]]
    checks = [[c["check"], c["value"], ("yes" if c["ok"] else "**no**") + ("" if c["gating"] else
                                                                          " (reported, not gating)")]
              for c in result["checks"]]
    settings = ", ".join(f"{k}={v}" for k, v in result["settings"].items())
    return "\n\n".join([
        f"Generated by `{result['command']}` on {result['date']} ({result['duration_s']:.0f} s).",
        "\n".join(machine_lines(result["machine"])),
        f"Settings (effective, production defaults unless set): {settings}. Capacity: "
        f"{result['capacity_users']} closed-loop users, {result['capacity_rps']:.1f} req/s.",
        "## Scenarios\n\n" + table(head, rows),
        "*accepted*: 200, 202 and 504 (a sync request whose deadline passed after it was queued); "
        "*completed*: 200 and 202s that reached SUCCESS; *lost*: accepted but never in a terminal state on "
        "`/tasks/<id>`, or no HTTP answer at all; *its server-side p95*: the web app's own "
        "`timings_ms.total`; *queue max*: the synchronous and async queues together. Clients pause "
        f"{BACKOFF_S} s after a 503. A SIGKILLed worker's messages come back after the visibility timeout "
        "plus a restore interval: the run waits up to "
        f"{REDELIVERY_WAIT_S} s for them.",
        f"## Bad inputs\n\n{sum(b['count'] for b in result['bad_inputs'])} tried, "
        f"{len({b['kind'] for b in result['bad_inputs']})} kinds.\n\n"
        + table(["where", "kind", "count", "status (HTTP) or final task state (queue)", "ok"], bad),
        "## Checks\n\n" + table(["check", "measured", "met"], checks),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.chaos",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (no SIGKILLs)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/reliability.md", help="report (%(default)s)")
    parser.add_argument("--batch", action="store_true", help="run the stack in batch mode")
    parser.add_argument("--amqp-url", help="run the worker SIGKILLs through this RabbitMQ instead "
                        "(results stay on the run's Redis; overload and Redis restart need a Redis broker "
                        "and are skipped)")
    parser.add_argument("--sync-queue-length", type=int, help="MAX_SYNC_QUEUE_LENGTH (default: the worker's "
                        "slots, the README's setting for a latency objective)")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    started = time.monotonic()
    slots = config.value("WORKER_CONCURRENCY") * (config.value("BATCH_SIZE") if args.batch else 1)
    variant = Variant("batch" if args.batch else "individual", {
        "USE_BATCH_PROCESSING": str(args.batch).lower(),
        "MAX_SYNC_QUEUE_LENGTH": str(slots if args.sync_queue_length is None else args.sync_queue_length)})
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        port = free_port()
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "RUN_DIR": tmp}
        write_redis_config(env)
        redis_proc = Process(command("redis", env), log_path=Path(tmp) / "redis.log", env=env, name="redis")
        url = f"redis://127.0.0.1:{port}/1"
        client = redis.Redis.from_url(config.with_redis_password(url, config.value("REDIS_PASSWORD")),
                                      socket_timeout=5, socket_connect_timeout=5)
        stack = Stack(variant, redis_url=url, log_dir=Path(tmp) / "logs", broker_url=args.amqp_url)
        run = Run(stack, client, redis_proc.start(), QUICK if args.quick else FULL, bool(args.amqp_url))
        try:
            wait_until(lambda: None if _pings(client) else "Redis not answering", 30, interval=0.1,
                       give_up=redis_proc.exited)
            with stack:
                logger.info("stack ready in %.0f s", stack.wait_ready())
                for step in PLAN:
                    step(run)
        finally:
            client.close()
            run.redis.stop()
    run.scenarios.sort(key=lambda s: "not_run" in s)  # what ran first, in plan order
    settings = {name: config.value(name, {**os.environ, **variant.env}) for name in SETTINGS}
    result: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "loadtest.chaos", *argv]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "duration_s": time.monotonic() - started,
        "machine": describe_machine(ROOT),
        "settings": {k: "default" if v is None else v for k, v in settings.items()},
        "capacity_users": run.capacity_users, "capacity_rps": run.capacity_rps,
        "scenarios": run.scenarios, "bad_inputs": run.bad_inputs, "checks": run.checks}
    replace_section(args.out, f"{SECTION}-rabbitmq" if args.amqp_url else SECTION, render(result),
                    title="# Reliability")
    for s in run.scenarios:
        print(f"{s['scenario']}: " + (f"not run: {s['not_run']}" if "not_run" in s else
              f"accepted {s['accepted']}, completed {s['completed']}, rejected 503 {s['rejected_503']}, "
              f"lost {s['lost']}, p95 {fmt(s['p95_s'], 3)} s"))
    for c in result["checks"]:
        print(f"{'ok ' if c['ok'] else 'NO '} {c['check']}: {c['value']}")
    print(f"report: {args.out}")
    return 1 if any(c["gating"] and not c["ok"] for c in result["checks"]) else 0


if __name__ == "__main__":
    sys.exit(main())
