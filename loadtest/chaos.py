"""Fault and overload scenarios against a real stack; writes ``docs/reliability.md``.

``python -m loadtest.chaos`` starts a Redis of its own (AOF every second,
``REDIS_MAXMEMORY`` with ``noeviction``, as ``make up`` runs it: ``deploy.stack``),
then one web app and one worker (``loadtest.stack``), all with the production
settings of ``common.config``, and runs in turn:

1. capacity: closed-loop users 1, 2, 4, ... until throughput stops growing;
2. overload: 4x those users plus an ``?async=true`` flood at 4x that throughput;
3. worker SIGKILL under load, repeated, a replacement started each time;
4. bad inputs: hostile uploads over HTTP and malformed messages put straight
   into the queue; the worker must keep serving;
5. Redis restart under load (SHUTDOWN, which fsyncs the AOF, then the same
   command again): 503 with Retry-After while it is down, then recovery with
   no process restarted.

Every 202 is followed through ``GET /tasks/<id>`` to a terminal state: *lost*
is an accepted request that never reached one (or a request that got no HTTP
answer at all). A worker killed holding messages gives them back only after
``BROKER_VISIBILITY_TIMEOUT`` (60 s) plus a restore interval (10 s): the run
waits that long for them. ``--quick`` is a short smoke run without SIGKILLs.
Clients that get a 503 pause ``BACKOFF_S`` (impatient, shorter than Retry-After).
"""
from __future__ import annotations

import argparse
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
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

from common import config
from common.contract import CLASSIFY_BATCH_TASK, CLASSIFY_TASK
from deploy.stack import ROOT, Process, command, free_port, wait_until, write_redis_config

from .make_corpus import CORPUS_DIR
from .markdown import describe_machine, fmt, machine_lines, replace_section, table
from .stack import Stack, Variant

__all__ = ["Reply", "main", "render", "summarize"]

logger = logging.getLogger("loadtest.chaos")

OUT = "docs/reliability.md"
SECTION = "chaos"
#: Seconds a client pauses after a 503 before its next request.
BACKOFF_S = 0.5
#: A sync request's client-side timeout: above RESULT_TIMEOUT, so the server answers first.
CLIENT_TIMEOUT_S = 70.0
#: Visibility timeout + restore interval + slack: how long a killed worker's messages may take.
REDELIVERY_WAIT_S = config.value("BROKER_VISIBILITY_TIMEOUT") + config.value("BROKER_RESTORE_INTERVAL") + 50
#: Settings shown in the report (effective values, defaults included).
SETTINGS = ("MAX_QUEUE_LENGTH", "MAX_SYNC_QUEUE_LENGTH", "MAX_WAITING_REQUESTS", "WEB_THREADS",
            "RESULT_TIMEOUT", "ASYNC_RESULT_TTL", "BROKER_VISIBILITY_TIMEOUT", "BROKER_RESTORE_INTERVAL",
            "REDIS_MAXMEMORY", "WORKER_POOL", "WORKER_CONCURRENCY", "WORKER_PREFETCH_MULTIPLIER",
            "USE_BATCH_PROCESSING")
TERMINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def queued(client: redis.Redis, queue: str) -> int:
    """Tasks waiting in the stack's synchronous queue and its async one."""
    return sum(int(client.llen(name)) for name in (queue, config.async_queue_of(queue)))


@dataclass(frozen=True)
class Plan:
    """Durations and sizes of one run."""

    users: tuple[int, ...]
    step_s: float
    #: On RabbitMQ: the worker is SIGKILLed at random moments this many times.
    amqp_kills: int
    overload_s: float
    kills: int
    kill_load_s: float
    restart_load_s: float
    redis_down_s: float


FULL = Plan(users=(1, 2, 4, 8, 16), step_s=10, amqp_kills=20, overload_s=40, kills=4, kill_load_s=45,
            restart_load_s=25, redis_down_s=5)
QUICK = Plan(users=(1, 2, 4), step_s=4, amqp_kills=3, overload_s=10, kills=0, kill_load_s=0,
             restart_load_s=10, redis_down_s=3)


# -- HTTP ---------------------------------------------------------------------

@dataclass(frozen=True)
class Reply:
    """One HTTP exchange: status (0 when no answer), seconds, Retry-After present and the JSON body's
    error code, task id and task state."""

    status: int
    seconds: float
    retry_after: bool = False
    code: str | None = None
    task_id: str | None = None
    state: str | None = None
    at: float = 0.0  #: monotonic time it ended
    #: The web app's own ``timings_ms.total`` of a 200, in seconds (None otherwise).
    server_seconds: float | None = None


def call(base: str, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = CLIENT_TIMEOUT_S) -> Reply:
    """One request on a fresh connection; never raises."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    start = time.monotonic()
    try:
        try:
            conn.request(method, path, body=body, headers=headers or {})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer (413) and close before reading the whole body
        response = conn.getresponse()
        data = response.read()
        status, retry_after = response.status, response.getheader("Retry-After") is not None
    except (OSError, http.client.HTTPException):
        return Reply(0, time.monotonic() - start, at=time.monotonic())
    finally:
        conn.close()
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    fields: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    raw_error = fields.get("error")
    error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
    text = {key: value if isinstance(value, str) else None
            for key, value in (("code", error.get("code")), ("task_id", fields.get("task_id")),
                               ("state", fields.get("status")))}
    timings = fields.get("timings_ms")
    total = timings.get("total") if isinstance(timings, dict) else None
    return Reply(status, time.monotonic() - start, retry_after, text["code"], text["task_id"], text["state"],
                 time.monotonic(), total / 1000 if isinstance(total, (int, float)) else None)


def load_photos() -> list[tuple[bytes, str]]:
    """The corpus as (bytes, content type)."""
    photos = sorted(p for p in CORPUS_DIR.iterdir() if p.suffix in {".jpg", ".png"})
    return [(p.read_bytes(), "image/png" if p.suffix == ".png" else "image/jpeg") for p in photos]


# -- load ---------------------------------------------------------------------

@dataclass
class Phase:
    """What one load phase sent and got back, and what Redis held meanwhile."""

    sync: list[Reply] = field(default_factory=list)
    async_: list[Reply] = field(default_factory=list)
    seconds: float = 0.0  #: how long the load ran (requests in flight at the end finish after it)
    ended: float = 0.0  #: monotonic time the load stopped
    used_memory_max: int = 0
    queue_max: int = 0


@contextmanager
def running_load(stack: Stack, photos: Sequence[tuple[bytes, str]], client: redis.Redis, *,
                 users: int, flood_rate: float = 0.0) -> Iterator[Phase]:
    """Closed-loop sync users and an open-loop async flood, until the block ends."""
    phase, stop = Phase(), threading.Event()

    def user(index: int) -> None:
        rng = random.Random(index)
        while not stop.is_set():
            data, kind = rng.choice(photos)
            reply = call(stack.url, "POST", "/predict", data, {"Content-Type": kind})
            phase.sync.append(reply)
            if reply.status == 503:
                stop.wait(BACKOFF_S * rng.uniform(0.5, 1.5))

    def flooder(index: int, threads: int) -> None:
        rng, interval = random.Random(1000 + index), threads / flood_rate
        next_at = time.monotonic() + rng.uniform(0, interval)
        while not stop.wait(max(0.0, next_at - time.monotonic())):
            data, kind = rng.choice(photos)
            phase.async_.append(call(stack.url, "POST", "/predict?async=true", data, {"Content-Type": kind}))
            next_at = max(next_at + interval, time.monotonic() - interval)  # open loop, no catch-up burst

    def sampler() -> None:
        while not stop.wait(0.5):
            try:
                phase.used_memory_max = max(phase.used_memory_max, int(client.info("memory")["used_memory"]))
                phase.queue_max = max(phase.queue_max, queued(client, stack.queue))
            except redis.RedisError:
                pass  # Redis is down in the restart scenario

    flood_threads = min(16, max(1, int(flood_rate // 10) + 1)) if flood_rate > 0 else 0
    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    threads += [threading.Thread(target=flooder, args=(i, flood_threads), daemon=True)
                for i in range(flood_threads)]
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


def _rate(phase: Phase) -> float:
    """Sync requests answered 200 per second of load."""
    done = sum(1 for r in phase.sync if r.status == 200 and r.at <= phase.ended)
    return done / phase.seconds if phase.seconds else 0.0


def p95(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


# -- following accepted tasks -------------------------------------------------

def settle(stack: Stack, client: redis.Redis, task_ids: Sequence[str], timeout: float) -> Counter[str]:
    """Wait (Redis, cheaply) until every task has a result, then ask ``/tasks/<id>`` for each; states."""
    pending = set(task_ids)

    def check() -> str | None:
        for chunk in [sorted(pending)[i:i + 500] for i in range(0, len(pending), 500)]:
            metas = client.mget([f"celery-task-meta-{task_id}" for task_id in chunk])
            pending.difference_update(t for t, m in zip(chunk, metas)
                                      if m is not None and json.loads(m).get("status") in TERMINAL)
        return f"{len(pending)} accepted tasks not finished" if pending else None

    try:
        wait_until(check, timeout, interval=1.0, progress=logger.info, report_every=15)
    except Exception as exc:  # noqa: BLE001 - what is still pending is reported as lost below
        logger.warning("%s", exc)
    with ThreadPoolExecutor(8) as pool:  # the API's word on each, not Redis'
        replies = list(pool.map(lambda task_id: call(stack.url, "GET", f"/tasks/{task_id}", timeout=10),
                                task_ids))
    states = Counter(r.state if r.status == 200 and r.state else f"HTTP {r.status}" for r in replies)
    unfinished = [t for t, r in zip(task_ids, replies) if r.state not in TERMINAL]
    if unfinished:
        logger.warning("never finished: %s", " ".join(unfinished[:20]))
    return states


def summarize(name: str, load: str, faults: str, phase: Phase, states: Counter[str]) -> dict[str, Any]:
    """A scenario's row: counts by outcome (sync by status, async by final task state)."""
    statuses = Counter(r.status for r in phase.sync) + Counter(r.status for r in phase.async_)
    replies = phase.sync + phase.async_
    accepted_sync = [r for r in phase.sync if r.status in (200, 504)]
    other = {str(s): n for s, n in sorted(statuses.items()) if s not in (0, 200, 202, 503, 504)}
    return {
        "scenario": name, "load": load, "faults": faults, "seconds": round(phase.seconds, 1),
        "requests": len(replies),
        "accepted": statuses[200] + statuses[202] + statuses[504],
        "completed": statuses[200] + states["SUCCESS"],
        "failed": statuses[504] + states["FAILURE"] + states["REVOKED"],
        "rejected_503": statuses[503],
        "rejected_503_without_retry_after": sum(1 for r in replies if r.status == 503 and not r.retry_after),
        "other": other,
        "lost": statuses[0] + sum(n for s, n in states.items() if s not in TERMINAL),
        "p95_s": p95([r.seconds for r in accepted_sync]),
        "server_p95_s": p95([r.server_seconds for r in accepted_sync if r.server_seconds is not None]),
        "completed_per_s": round(_rate(phase), 2),
        "redis_used_memory_max_mib": round(phase.used_memory_max / 2**20, 1),
        "queue_max": phase.queue_max,
    }


# -- scenarios ----------------------------------------------------------------

@dataclass
class Run:
    """The stack, its Redis and what the scenarios found."""

    stack: Stack
    client: redis.Redis
    photos: list[tuple[bytes, str]]
    plan: Plan
    #: The Redis this run started, each start (empty: --redis-url); the last one runs.
    redis_procs: list[Process]
    scenarios: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    bad_inputs: list[dict[str, Any]] = field(default_factory=list)
    capacity_users: int = 1
    capacity_rps: float = 1.0
    capacity_p95: float | None = None

    def check(self, what: str, value: str, ok: bool, gating: bool = True) -> None:
        self.checks.append({"check": what, "value": value, "ok": ok, "gating": gating})

    def load(self, seconds: float, users: int, flood_rate: float = 0.0) -> Phase:
        with running_load(self.stack, self.photos, self.client, users=users, flood_rate=flood_rate) as phase:
            time.sleep(seconds)  # the load runs for this long
        return phase


def capacity(run: Run) -> None:
    """Closed-loop users 1, 2, 4, ...: the smallest count within 10 % of the best throughput."""
    run.load(run.plan.step_s / 2, users=2)  # warm-up, dropped
    steps = []
    for users in run.plan.users:
        phase = run.load(run.plan.step_s, users)
        rps = _rate(phase)
        steps.append((users, rps, phase))
        logger.info("capacity: %d users, %.1f req/s", users, rps)
    best = max(rps for _, rps, _ in steps)
    users, rps, phase = next(step for step in steps if step[1] >= 0.9 * best)
    run.capacity_users, run.capacity_rps = users, rps
    row = summarize("capacity", f"{users} closed-loop users (sweep {', '.join(str(s[0]) for s in steps)})",
                    "none", phase, Counter())
    run.capacity_p95 = row["p95_s"]
    run.scenarios.append(row)


def overload(run: Run) -> None:
    """4x the users plus an async flood at 4x the measured throughput."""
    users, rate = 4 * run.capacity_users, 4 * run.capacity_rps
    phase = run.load(run.plan.overload_s, users, flood_rate=rate)
    states = settle(run.stack, run.client, [r.task_id for r in phase.async_ if r.task_id], REDELIVERY_WAIT_S)
    sent_rate = len(phase.async_) / phase.seconds
    row = summarize("overload (4x)", f"{users} closed-loop users + async flood of {sent_rate:.0f} req/s "
                    f"(target {rate:.0f})", "none", phase, states)
    run.scenarios.append(row)
    statuses = sorted({r.status for r in phase.sync + phase.async_})
    run.check("overload: only 200, 202 and 503 with Retry-After", f"statuses {statuses}, "
              f"{row['rejected_503_without_retry_after']} 503 without Retry-After",
              set(statuses) <= {200, 202, 503} and not row["rejected_503_without_retry_after"])
    maxmemory = int(run.client.info("memory").get("maxmemory", 0))
    run.check("overload: Redis memory bounded", f"used_memory max {row['redis_used_memory_max_mib']} MiB, "
              f"maxmemory {maxmemory / 2**20:.0f} MiB, queue max {row['queue_max']}",
              0 < phase.used_memory_max <= maxmemory)
    if run.capacity_p95 is not None and row["p95_s"] is not None:
        ratio = row["p95_s"] / run.capacity_p95
        run.check("overload: p95 of the accepted within 2x the p95 at capacity",
                  f"{row['p95_s']:.3f} s vs {run.capacity_p95:.3f} s (x{ratio:.1f})", ratio <= 2.0,
                  gating=False)


def _replace_worker(stack: Stack) -> Process:
    old = stack.services["worker"]
    new = Process(old.argv, log_path=old.log_path, env=old.env, cwd=old.cwd, name="worker").start()
    stack.services["worker"] = new
    return new


class StoreCounter:
    """Task id -> results stored since ``start`` (Celery's Redis backend publishes each store)."""

    def __init__(self, client: redis.Redis) -> None:
        self.counts: Counter[str] = Counter()
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)

    def start(self) -> StoreCounter:
        self._pubsub.psubscribe("celery-task-meta-*")
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()

    def twice(self) -> list[str]:
        """Tasks whose terminal result was stored more than once."""
        return sorted(task_id for task_id, count in self.counts.items() if count > 1)

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.2)
            except redis.RedisError:
                return
            if message is not None and json.loads(message["data"]).get("status") in TERMINAL:
                self.counts[message["channel"].decode().removeprefix("celery-task-meta-")] += 1


def worker_kills(run: Run, amqp: bool = False) -> Callable[[], None]:
    """SIGKILL the worker under load; returns the deferred settling.

    Redis: ``plan.kills`` times, each once the worker holds work (unacknowledged
    messages). RabbitMQ: ``plan.amqp_kills`` times at random moments, since a
    killed worker's deliveries come back at once.
    """
    rng, kills, held = random.Random(8), 0, 0
    planned = run.plan.amqp_kills if amqp else run.plan.kills
    gap = (run.plan.step_s if amqp else run.plan.kill_load_s / (planned + 1))
    stores = StoreCounter(run.client).start()
    with running_load(run.stack, run.photos, run.client, users=run.capacity_users,
                      flood_rate=run.capacity_rps / 2) as phase:
        for _ in range(planned):
            time.sleep(gap * rng.uniform(0.5, 1.0))  # load between faults
            if not amqp:
                # Unacknowledged messages of workers killed before stay for the visibility timeout:
                # the new worker holds work once there are more.
                with_work = lambda held=held: None if run.client.hlen("unacked") > held else "no work held"  # noqa: E731
                try:
                    wait_until(with_work, 60, interval=0.05)
                except Exception as exc:  # noqa: BLE001 - kill anyway
                    logger.warning("%s", exc)
            run.stack.services["worker"].signal(signal.SIGKILL)
            run.stack.services["worker"].wait(30)
            kills += 1
            held = run.client.hlen("unacked")
            _replace_worker(run.stack)
            logger.info("worker kill %d/%d", kills, planned)
        time.sleep(gap)
    last_kill = time.monotonic() - gap

    def finish() -> None:
        ids = [r.task_id for r in phase.async_ if r.task_id]
        wait = max(10.0, REDELIVERY_WAIT_S - (time.monotonic() - last_kill))
        states = settle(run.stack, run.client, ids, wait)
        stores.close()
        twice = stores.twice()
        moments = "at random moments" if amqp else "each while it held work"
        row = summarize("worker SIGKILL", f"{run.capacity_users} closed-loop users + async "
                        f"{len(phase.async_) / phase.seconds:.0f} req/s", f"{kills} x SIGKILL {moments}, "
                        "replacement started each time", phase, states)
        run.scenarios.append(row)
        run.check("worker SIGKILL: nothing accepted lost", f"lost {row['lost']}", row["lost"] == 0)
        run.check("worker SIGKILL: no result stored twice", f"{len(stores.counts)} results stored, "
                  f"{len(twice)} twice{': ' + ' '.join(twice[:5]) if twice else ''}", not twice)
    return finish


def redis_restart(run: Run) -> None:
    """SHUTDOWN the stack's Redis under load, start it again; no other process restarted."""
    if not run.redis_procs:
        run.scenarios.append(_not_run("Redis restart", "the Redis is not one this run started (--redis-url)"))
        return
    pids = {name: s.pid for name, s in run.stack.services.items()}
    with running_load(run.stack, run.photos, run.client, users=run.capacity_users,
                      flood_rate=run.capacity_rps / 2) as phase:
        time.sleep(run.plan.restart_load_s / 3)
        accepted_before = [r.task_id for r in list(phase.async_) if r.task_id]
        down_at = time.monotonic()
        try:
            run.client.shutdown()
        except redis.RedisError:
            pass  # the connection closes as the server exits
        proc = run.redis_procs[-1]
        proc.wait(30)
        time.sleep(run.plan.redis_down_s)  # the outage is the fault under test
        run.redis_procs.append(Process(proc.argv, log_path=proc.log_path, env=proc.env, name="redis").start())
        up_at = time.monotonic()
        wait_until(lambda: None if _pings(run.client) else "Redis not answering", 30, interval=0.1)
        time.sleep(run.plan.restart_load_s * 2 / 3)
    states = settle(run.stack, run.client, [r.task_id for r in phase.async_ if r.task_id], REDELIVERY_WAIT_S)
    before = settle(run.stack, run.client, accepted_before, 5)
    row = summarize("Redis restart", f"{run.capacity_users} closed-loop users + async "
                    f"{len(phase.async_) / phase.seconds:.0f} req/s",
                    f"SHUTDOWN, down {up_at - down_at:.1f} s, same command again", phase, states)
    run.scenarios.append(row)
    during = [r for r in phase.sync + phase.async_ if down_at <= r.at - r.seconds and r.at <= up_at]
    # Sync requests in flight at the restart may wait for their deadline (their messages come
    # back after the visibility timeout): recovery is the first request sent after Redis was
    # back that the stack took (200 or 202; every 202 is followed to its end above).
    first_ok = min((r.at for r in phase.sync + phase.async_
                    if r.status in (200, 202) and r.at - r.seconds > up_at), default=None)
    recovered = f"{first_ok - up_at:.1f} s" if first_ok is not None else "never"
    run.check("Redis restart: 503 with Retry-After while down",
              f"{len(during)} requests while down: {dict(Counter(r.status for r in during))}",
              bool(during) and all(r.status == 503 and r.retry_after for r in during))
    run.check("Redis restart: recovered without restarting web or worker",
              f"first request taken {recovered} after Redis was back", first_ok is not None
              and pids == {name: s.pid for name, s in run.stack.services.items()})
    run.check("Redis restart: every 202 accepted before the restart finished",
              f"{before['SUCCESS']}/{len(accepted_before)} SUCCESS, {dict(before)}",
              before["SUCCESS"] == len(accepted_before))
    run.check("Redis restart: nothing accepted lost", f"lost {row['lost']}", row["lost"] == 0)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _not_run(name: str, reason: str) -> dict[str, Any]:
    return {"scenario": name, "not_run": reason}


# -- bad inputs ---------------------------------------------------------------

def _png(width: int, height: int, rows: Callable[[], Iterator[bytes]] | None = None) -> bytes:
    """An 8-bit RGBA PNG of ``width`` x ``height`` with ``rows``, or an empty IDAT when None."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    data = b""
    if rows is not None:
        squeeze = zlib.compressobj(9)
        data = b"".join(squeeze.compress(row) for row in rows()) + squeeze.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _bomb() -> bytes:
    """6324 x 6324 RGBA zeros (under the pixel limit, 160 MB decoded): a few hundred kB."""
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
    boundary = "chaosboundary"
    multipart = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    no_file = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"top_k\"\r\n\r\n3\r\n"
               f"--{boundary}--\r\n").encode()
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
             ("wrong content type", "/predict", no_file, multipart),
             ("wrong content type", "/predict", jpeg, {"Content-Type": "multipart/form-data; boundary=x"}),
             ("oversize body", "/predict", bytes(11 * 2**20), as_jpeg),
             ("unknown task id", f"/tasks/{uuid.uuid4()}", b"", {}),
             ("unknown task id", "/tasks/..%2F..%2Fetc", b"", {})]
    cases += [("bad top_k", f"/predict?top_k={value}", jpeg, as_jpeg)
              for value in ("0", "1001", "abc", "-1", "1e3", "9" * 40)]
    cases += [("bad timeout", f"/predict?timeout={value}", jpeg, as_jpeg)
              for value in ("-1", "nan", "abc", "0")]
    cases += [("bad timeout", "/predict", jpeg, {**as_jpeg, header: value})
              for header, value in (("Request-Timeout", "inf"), ("X-Request-Timeout", "1e999"))]
    return cases


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
    from celery import Celery  # imported here: only this scenario speaks to the broker itself

    worker_pid = run.stack.services["worker"].pid
    by_kind: dict[str, Counter[str]] = {}
    for kind, path, body, headers in http_bad_inputs(run.photos):
        method = "GET" if path.startswith("/tasks") else "POST"
        reply = call(run.stack.url, method, path, body or None, headers)
        by_kind.setdefault(kind, Counter())[f"{reply.status or 'no answer'} {reply.code or ''}".strip()] += 1
    for kind, outcomes in by_kind.items():
        bad = [o for o in outcomes if not o[0].isdigit() or o.startswith("5")]
        run.bad_inputs.append({"where": "HTTP", "kind": kind, "count": sum(outcomes.values()),
                               "outcomes": dict(outcomes), "ok": not bad})
    app = Celery("chaos")
    app.config_from_object("celeryconfig")
    broker_url = run.stack.services["worker"].env["CELERY_BROKER_URL"]
    app.conf.update(broker_url=broker_url, result_backend=run.stack.redis_url)
    ids = {}
    with app.producer_or_acquire() as producer:
        for kind, task, body, serializer in QUEUE_BAD_INPUTS:
            ids[kind] = str(uuid.uuid4())
            producer.publish(body, routing_key=run.stack.queue, serializer=serializer,
                             headers={"task": task, "id": ids[kind], "lang": "py"})
    drained = lambda: None if not _broker_queued(app, run) else "messages still queued"  # noqa: E731
    stored = lambda: None if all(run.client.exists(f"celery-task-meta-{i}") for i in ids.values()) \
        else "not every injected message has a result"  # noqa: E731
    for check, seconds in ((drained, 30), (stored, 5)):  # a dropped message never gets one
        try:
            wait_until(check, seconds, interval=0.2)
        except Exception as exc:  # noqa: BLE001 - reported below
            logger.info("%s", exc)
    data, kind = run.photos[0]  # once the bad messages are out of the queue and its bound
    good = call(run.stack.url, "POST", "/predict", data, {"Content-Type": kind})
    for kind, task_id in ids.items():
        meta = run.client.get(f"celery-task-meta-{task_id}")
        state = json.loads(meta)["status"] if meta else "no result: message dropped"
        run.bad_inputs.append({"where": "queue", "kind": kind, "count": 1, "outcomes": {state: 1},
                               "ok": state in ("FAILURE", "no result: message dropped")})
    alive = run.stack.services["worker"].exited() is None and run.stack.services["worker"].pid == worker_pid
    run.check("bad inputs: no 5xx and no unanswered request", f"{sum(b['count'] for b in run.bad_inputs)} "
              "tried", all(b["ok"] for b in run.bad_inputs))
    run.check("bad inputs: the worker kept serving", f"a good upload got {good.status} afterwards; the same "
              f"worker process {'is' if alive else 'is not'} running, queue "
              f"{'drained' if drained() is None else 'not drained'}", good.status == 200 and alive)


def _broker_queued(app: Any, run: Run) -> int:
    """Messages waiting in the stack's two queues, on whichever broker it uses."""
    if str(app.conf.broker_url).startswith("redis"):
        return queued(run.client, run.stack.queue)
    with app.connection_for_write() as conn:
        return sum(int(conn.default_channel.queue_declare(queue=name, passive=True).message_count)
                   for name in (run.stack.queue, config.async_queue_of(run.stack.queue)))


# -- report -------------------------------------------------------------------

def render(result: dict[str, Any]) -> str:
    """The report section from a run's JSON-able result."""
    head = ["scenario", "load held", "faults injected", "s", "requests", "accepted", "completed",
            "expired or failed", "rejected 503", "other", "lost", "p95 of accepted sync (s)",
            "its server-side p95 (s)", "sync 200/s",
            "Redis used_memory max (MiB)", "queue max"]
    rows = []
    for s in result["scenarios"]:
        if "not_run" in s:
            rows.append([s["scenario"], f"not run: {s['not_run']}", *["—"] * (len(head) - 2)])
            continue
        other = ", ".join(f"{k}: {v}" for k, v in s["other"].items()) or "0"
        rejected = str(s["rejected_503"]) + (f" ({s['rejected_503_without_retry_after']} without Retry-After)"
                                             if s["rejected_503_without_retry_after"] else "")
        rows.append([s["scenario"], s["load"], s["faults"], fmt(s["seconds"]), str(s["requests"]),
                     str(s["accepted"]), str(s["completed"]), str(s["failed"]), rejected, other,
                     f"**{s['lost']}**", fmt(s["p95_s"], 3), fmt(s.get("server_p95_s"), 3),
                     fmt(s["completed_per_s"]),
                     fmt(s["redis_used_memory_max_mib"]),
                     str(s["queue_max"])])
    bad = [[b["where"], b["kind"], str(b["count"]),
            ", ".join(f"{k} × {v}" for k, v in b["outcomes"].items()), "yes" if b["ok"] else "**no**"]
           for b in result["bad_inputs"]]
    checks = [[c["check"], c["value"], ("yes" if c["ok"] else "**no**") + ("" if c["gating"] else
                                                                          " (reported, not gating)")]
              for c in result["checks"]]
    settings = ", ".join(f"{k}={v}" for k, v in result["settings"].items())
    kinds = sorted({b["kind"] for b in result["bad_inputs"]})
    return "\n\n".join([
        f"Generated by `{result['command']}` on {result['date']} ({result['duration_s']:.0f} s).",
        "\n".join(machine_lines(result["machine"])),
        f"Settings (effective, production defaults unless set): {settings}. Capacity: "
        f"{result['capacity_users']} closed-loop users, {result['capacity_rps']:.1f} req/s.",
        "## Scenarios\n\n" + table(head, rows),
        "*accepted*: 200, 202 and 504 (a sync request whose deadline passed after it was queued); "
        "*completed*: 200 and 202s that reached SUCCESS; *lost*: accepted but never in a terminal state on "
        "`/tasks/<id>` (SUCCESS, FAILURE, REVOKED), or no HTTP answer at all; *its server-side p95*: the "
        "web app's own `timings_ms.total` of the same requests (the rest is the client and the network); "
        "*queue max*: tasks in the synchronous and async queues together. Clients pause "
        f"{BACKOFF_S} s after a 503. A SIGKILLed worker's messages come back after the visibility timeout "
        "(BROKER_VISIBILITY_TIMEOUT) plus a restore interval: the run waits up to "
        f"{REDELIVERY_WAIT_S} s for them.",
        f"## Bad inputs\n\n{sum(b['count'] for b in result['bad_inputs'])} tried, {len(kinds)} kinds.\n\n"
        + table(["where", "kind", "count", "status (HTTP) or final task state (queue)", "ok"], bad),
        "## Checks\n\n" + table(["check", "measured", "met"], checks),
    ])


def latency_queue_bound(batch: bool) -> int:
    """The README's ``MAX_SYNC_QUEUE_LENGTH`` for a latency objective: one round of the worker's slots."""
    return config.value("WORKER_CONCURRENCY") * (config.value("BATCH_SIZE") if batch else 1)


def _result(run: Run, argv: Sequence[str], started: float) -> dict[str, Any]:
    env_settings = {name: config.value(name, {**os.environ, **run.stack.variant.env}) for name in SETTINGS}
    return {"command": shlex.join(["python", "-m", "loadtest.chaos", *argv]),
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "duration_s": time.monotonic() - started, "machine": describe_machine(ROOT),
            "settings": {k: "default" if v is None else v for k, v in env_settings.items()},
            "capacity_users": run.capacity_users, "capacity_rps": run.capacity_rps,
            "scenarios": run.scenarios, "bad_inputs": run.bad_inputs, "checks": run.checks}


# -- main ---------------------------------------------------------------------

def _start_redis(port: int, run_dir: Path) -> tuple[Process, str]:
    """``make up``'s Redis command (AOF, maxmemory, noeviction) on ``port``, data in ``run_dir``."""
    url = f"redis://127.0.0.1:{port}/0"
    env = {**os.environ, "REDIS_URL": url, "RUN_DIR": str(run_dir)}
    write_redis_config(env)
    proc = Process(command("redis", env), log_path=run_dir / "redis.log", env=env, name="redis").start()
    return proc, url


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.chaos", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (no SIGKILLs)")
    parser.add_argument("--out", type=Path, default=ROOT / OUT, help="report to write (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--redis-port", type=int, help="port of the Redis this run starts (default: free)")
    parser.add_argument("--batch", action="store_true", help="run the stack in batch mode")
    parser.add_argument("--logs", type=Path, help="keep the services' logs here (default: removed)")
    parser.add_argument("--amqp-url", help="run the worker SIGKILLs through this RabbitMQ instead (results "
                        "stay on the run's Redis; the overload and Redis-restart scenarios need a Redis "
                        "broker and are skipped)")
    parser.add_argument("--sync-queue-length", type=int,
                        help="the stack's MAX_SYNC_QUEUE_LENGTH (default: the worker's slots, the "
                             "README's setting for a latency objective)")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    started, plan = time.monotonic(), QUICK if args.quick else FULL
    bound = latency_queue_bound(args.batch) if args.sync_queue_length is None else args.sync_queue_length
    variant = Variant("batch" if args.batch else "individual",
                      {"USE_BATCH_PROCESSING": str(args.batch).lower(), "MAX_SYNC_QUEUE_LENGTH": str(bound)})
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        redis_proc, base_url = _start_redis(args.redis_port or free_port(), Path(tmp))
        redis_procs = [redis_proc]
        url = base_url.rsplit("/", 1)[0] + "/1"
        client = redis.Redis.from_url(config.with_redis_password(url, config.value("REDIS_PASSWORD")),
                                      socket_timeout=5, socket_connect_timeout=5)
        try:
            wait_until(lambda: None if _pings(client) else "Redis not answering", 30, interval=0.1,
                       give_up=redis_proc.exited)
            logs = args.logs or Path(tmp) / "logs"
            stack = Stack(variant, redis_url=url, log_dir=logs, broker_url=args.amqp_url)
            with stack:
                logger.info("stack ready in %.0f s (logs in %s)", stack.wait_ready(), logs)
                run = Run(stack, client, load_photos(), plan, redis_procs)
                capacity(run)
                if args.amqp_url:
                    finish: Callable[[], None] | None = worker_kills(run, amqp=True)
                else:
                    overload(run)
                    finish = worker_kills(run) if plan.kills else None
                if finish is None:
                    run.scenarios.append(_not_run("worker SIGKILL", "--quick (redelivery waits for the "
                                                  f"{config.value('BROKER_VISIBILITY_TIMEOUT')} s visibility "
                                                  "timeout)"))
                bad_inputs(run)
                if finish is not None:
                    finish()
                if args.amqp_url:
                    for name in ("overload (4x)", "Redis restart"):
                        run.scenarios.append(_not_run(name, "RabbitMQ run (--amqp-url): a Redis broker's "
                                                      "scenario"))
                else:
                    redis_restart(run)
        finally:
            client.close()
            redis_procs[-1].stop()
    result = _result(run, argv, started)
    replace_section(args.out, f"{SECTION}-rabbitmq" if args.amqp_url else SECTION, render(result),
                    title="# Reliability")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    for s in result["scenarios"]:
        print(f"{s['scenario']}: " + (f"not run: {s['not_run']}" if "not_run" in s else
              f"accepted {s['accepted']}, completed {s['completed']}, rejected 503 {s['rejected_503']}, "
              f"lost {s['lost']}, p95 {fmt(s['p95_s'], 3)} s"))
    failed = [c for c in result["checks"] if not c["ok"]]
    for c in result["checks"]:
        print(f"{'ok ' if c['ok'] else 'NO '} {c['check']}: {c['value']}")
    print(f"report: {args.out}")
    return 1 if any(c["gating"] for c in failed) else 0


if __name__ == "__main__":
    sys.exit(main())
