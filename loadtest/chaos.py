"""Fault and overload scenarios against a real stack; writes ``docs/reliability.md``.

Every accepted request is followed to its end: *lost* (accepted, never finished or never answered) is
what no fault may cause.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import io
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
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from PIL.PngImagePlugin import putchunk

from kombu import Connection

from common import config
from common.contract import CLASSIFY_BATCH_TASK, CLASSIFY_TASK
from common.redis_transport import CONSUMERS_KEY
from deploy.stack import ROOT, Process, StackError, command, free_port, wait_until, write_redis_config

from .make_corpus import CORPUS_DIR
from .report import describe_machine, fmt, machine_lines, replace_section, table
from .stack import INDIVIDUAL, Stack, Variant

logger = logging.getLogger("loadtest.chaos")
#: A client's pause after a 503 (impatient: under Retry-After); a sync request's timeout (> RESULT_TIMEOUT).
BACKOFF_S, CLIENT_TIMEOUT_S = 0.5, 70.0
#: The longest a SIGKILLed worker's messages may take to come back: the backstop, its interval, slack.
REDELIVERY_WAIT_S = config.value("BROKER_VISIBILITY_TIMEOUT") + config.value("BROKER_RESTORE_INTERVAL") + 50
SETTINGS = ("MAX_QUEUE_LENGTH MAX_SYNC_QUEUE_LENGTH MAX_LATENCY_MS MAX_WAITING_REQUESTS WEB_THREADS "
            "RESULT_TIMEOUT ASYNC_RESULT_TTL BROKER_VISIBILITY_TIMEOUT BROKER_DEAD_CONSUMER_SECONDS "
            "BROKER_RESTORE_INTERVAL REDIS_MAXMEMORY WORKER_POOL WORKER_CONCURRENCY "
            "WORKER_PREFETCH_MULTIPLIER USE_BATCH_PROCESSING").split()  # shown in the report
TERMINAL = frozenset({"SUCCESS", "FAILURE", "REVOKED"})
DROPPED = "no result: message dropped"
Row = dict[str, Any]


@dataclass(frozen=True)
class Plan:
    users: tuple[int, ...]  #: the capacity sweep; its last point is the guide's load (20 users)
    step_s: float
    overload_s: float
    kills: int  #: on Redis, each once the worker holds work, about ``kill_gap_s`` apart
    kill_gap_s: float
    amqp_kills: int  #: on RabbitMQ (deliveries come back at once), at random moments about ``step_s`` apart
    restart_load_s: float
    redis_down_s: float


FULL = Plan((1, 2, 4, 8, 20), step_s=10, overload_s=40, kills=4, kill_gap_s=9, amqp_kills=20,
            restart_load_s=25, redis_down_s=5)
QUICK = Plan((1, 2, 4), step_s=4, overload_s=10, kills=0, kill_gap_s=0, amqp_kills=3, restart_load_s=10,
             redis_down_s=3)


@dataclass(frozen=True)
class Reply:  # one HTTP exchange (status 0: no answer) that ended ``at`` (monotonic)
    status: int
    seconds: float
    retry_after: bool = False
    code: str | None = None  #: the JSON error code
    task_id: str | None = None
    state: str | None = None
    at: float = 0.0
    server_seconds: float | None = None  #: the body's ``timings_ms.total``


def call(base: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = CLIENT_TIMEOUT_S) -> Reply:
    """One request on a fresh connection; never raises. http.client, not requests: at hundreds of
    requests a second the client's CPU is taken from the stack it measures."""
    conn, start = http.client.HTTPConnection(urlsplit(base).netloc, timeout=timeout), time.monotonic()
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a 413 may close before the body
            conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
    except (OSError, http.client.HTTPException):
        return Reply(0, time.monotonic() - start, at=time.monotonic())
    finally:
        conn.close()
    end = time.monotonic()
    try:  # the fields of a JSON object body, where it has them
        fields = json.loads(data)
        code, total = (fields.get("error") or {}).get("code"), (fields.get("timings_ms") or {}).get("total")
    except (ValueError, AttributeError):
        fields, code, total = {}, None, None
    return Reply(response.status, end - start, response.getheader("Retry-After") is not None, code,
                 fields.get("task_id"), fields.get("status"), end,
                 total / 1000 if isinstance(total, (int, float)) else None)


@dataclass
class Phase:  # what one load phase sent and got back, and the most Redis held meanwhile
    users: int = 0
    rate: float = 0.0  #: the async flood's target, per second
    sync: list[Reply] = field(default_factory=list)
    async_: list[Reply] = field(default_factory=list)
    seconds: float = 0.0
    ended: float = 0.0  #: monotonic time the load stopped (requests in flight finish after it)
    used_memory_max: int = 0
    queue_max: int = 0

    def task_ids(self) -> list[str]:
        return [r.task_id for r in list(self.async_) if r.task_id]


def p95(values: Sequence[float]) -> float | None:
    """Nearest rank."""
    return sorted(values)[min(len(values) - 1, int(0.95 * len(values)))] if values else None


def _wait(check: Callable[[], str | None], timeout: float, interval: float = 1.0, **options: Any) -> None:
    try:  # logging instead of raising: what is still missing is counted and reported
        wait_until(check, timeout, interval=interval, **options)
    except (StackError, redis.RedisError) as exc:
        logger.warning("%s", exc)


def summarize(name: str, load: str, faults: str, phase: Phase, states: Counter[str]) -> Row:
    """A scenario's row: sync replies counted by status, async ones by their task's final state."""
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

    def twice(self) -> list[str]:  # tasks whose terminal result was stored more than once
        return sorted(task_id for task_id, count in self.counts.items() if count > 1)

    def _stored(self, message: dict[str, Any]) -> None:
        if json.loads(message["data"]).get("status") in TERMINAL:
            self.counts[message["channel"].decode().removeprefix("celery-task-meta-")] += 1


@dataclass
class Run:
    """The stack, the Redis this run started, and what the plan found."""

    stack: Stack
    client: redis.Redis
    redis: Process
    plan: Plan
    amqp: bool  #: the broker is a RabbitMQ (results stay on the Redis)
    photos: list[tuple[bytes, str]] = field(default_factory=lambda: [
        (p.read_bytes(), "image/png" if p.suffix == ".png" else "image/jpeg")
        for p in sorted(CORPUS_DIR.iterdir()) if p.suffix in {".jpg", ".png"}])
    scenarios: list[Row] = field(default_factory=list)
    checks: list[Row] = field(default_factory=list)
    bad_inputs: list[Row] = field(default_factory=list)
    capacity_users: int = 1
    capacity_rps: float = 1.0
    guide_p95: float | None = None  #: at the sweep's last point, what the overload is held to

    def check(self, scenario: str, what: str, value: str, ok: bool) -> None:
        self.checks.append({"check": f"{scenario}: {what}", "value": value, "ok": ok})

    def skipped(self, scenario: str, why: str | None) -> bool:
        if why:  # listed, with why
            self.scenarios.append({"scenario": scenario, "not_run": why})
        return why is not None

    @contextlib.contextmanager
    def load(self, users: int, flood_rate: float = 0.0) -> Iterator[Phase]:
        """``users`` closed-loop sync senders (pausing after a 503) and an open-loop async flood of
        ``flood_rate``/s (no catch-up bursts) until the block ends, Redis sampled meanwhile."""
        phase, stop = Phase(users, flood_rate), threading.Event()
        floods = min(16, int(flood_rate // 10) + 1) if flood_rate > 0 else 0

        def send(seed: int, out: list[Reply], path: str, interval: float) -> None:
            rng = random.Random(seed)
            next_at = time.monotonic() + rng.uniform(0, interval)
            while not stop.wait(max(0.0, next_at - time.monotonic())):
                data, kind = rng.choice(self.photos)
                out.append(reply := call(self.stack.url, "POST", path, data, {"Content-Type": kind}))
                pause = BACKOFF_S * rng.uniform(0.5, 1.5) if reply.status == 503 else 0.0
                now = time.monotonic()
                next_at = max(next_at + interval, now - interval) if interval else now + pause

        def sample() -> None:
            while not stop.wait(0.5):
                with contextlib.suppress(redis.RedisError):  # Redis is down in the restart scenario
                    used = int(self.client.info("memory")["used_memory"])
                    phase.used_memory_max = max(phase.used_memory_max, used)
                    phase.queue_max = max(phase.queue_max, self.queued())

        args = [(i, phase.sync, "/predict", 0.0) for i in range(users)]
        args += [(1000 + i, phase.async_, "/predict?async=true", floods / flood_rate) for i in range(floods)]
        threads = [threading.Thread(target=send, args=a, daemon=True) for a in args]
        threads.append(threading.Thread(target=sample, daemon=True))
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

    def settle(self, task_ids: Sequence[str], timeout: float) -> Counter[str]:
        """Wait (on Redis, cheaply) until every task has a result, then ask ``/tasks/<id>`` for each."""
        pending = set(task_ids)

        def check() -> str | None:
            for chunk in [sorted(pending)[i:i + 500] for i in range(0, len(pending), 500)]:
                metas = self.client.mget([f"celery-task-meta-{task_id}" for task_id in chunk])
                pending.difference_update(t for t, m in zip(chunk, metas)
                                          if m is not None and json.loads(m).get("status") in TERMINAL)
            return f"{len(pending)} accepted tasks not finished" if pending else None

        _wait(check, timeout, progress=logger.info, report_every=15)
        with ThreadPoolExecutor(8) as pool:  # the API's word on each, not Redis'
            replies = list(pool.map(lambda t: call(self.stack.url, "GET", f"/tasks/{t}", timeout=10),
                                    task_ids))
        return Counter(r.state if r.status == 200 and r.state else f"HTTP {r.status}" for r in replies)

    def queued(self) -> int:
        """Tasks waiting in the stack's synchronous queue and its async one."""
        queue = self.stack.queue
        return sum(int(self.client.llen(name)) for name in (queue, config.async_queue_of(queue)))

    def finish(self, scenario: str, load: str, faults: str, phase: Phase) -> Row:
        """Every accepted task followed to its end: the scenario's row, ``load`` formatted."""
        states = self.settle(phase.task_ids(), REDELIVERY_WAIT_S)
        load = load.format(users=phase.users, sent=len(phase.async_) / phase.seconds, rate=phase.rate)
        self.scenarios.append(row := summarize(scenario, load, faults, phase, states))
        return row

    def redis_up(self) -> None:
        def answers() -> str | None:
            with contextlib.suppress(redis.RedisError):
                return None if self.client.ping() else "Redis not answering"
            return "Redis not answering"
        wait_until(answers, 30, interval=0.1, give_up=self.redis.exited)


_BOTH = "{users} closed-loop users + async {sent:.0f} req/s"
_REDIS_ONLY = "RabbitMQ run (--amqp-url): a Redis broker's scenario"


def capacity(run: Run) -> None:
    """Closed-loop users 1, 2, 4, ...: the smallest count within 10 % of the best throughput; the last
    point, the guide's load, must pass without a 503 (latency admission must not refuse it)."""
    def load(seconds: float, users: int) -> Phase:
        with run.load(users) as phase:
            time.sleep(seconds)
        return phase

    load(run.plan.step_s / 2, users=2)  # warm-up, dropped
    rows = {u: summarize("capacity", "", "none", load(run.plan.step_s, u), Counter()) for u in run.plan.users}
    best = max(row["completed_per_s"] for row in rows.values())
    run.capacity_users, row = next((u, r) for u, r in rows.items() if r["completed_per_s"] >= 0.9 * best)
    run.capacity_rps, guide = row["completed_per_s"], dict(rows[run.plan.users[-1]])
    row["load"] = f"{run.capacity_users} closed-loop users (sweep {', '.join(map(str, run.plan.users))})"
    run.guide_p95, guide["scenario"] = guide["p95_s"], "the guide's load"
    guide["load"] = f"{run.plan.users[-1]} closed-loop users"
    run.scenarios += [row] + ([guide] if run.capacity_users != run.plan.users[-1] else [])
    run.check("the guide's load", "no 503", f"{guide['rejected_503']} of {guide['requests']} refused",
              guide["rejected_503"] == 0)


def overload(run: Run, name: str = "overload (4x)") -> None:
    """Four times the guide's closed-loop users: latency admission holds the accepted p95 to 2x."""
    if run.skipped(name, _REDIS_ONLY if run.amqp else None):
        return
    with run.load(4 * run.plan.users[-1]) as phase:
        time.sleep(run.plan.overload_s / 2)
    row = run.finish(name, "{users} closed-loop users", "none", phase)
    _refusals_told(run, name, phase, row)
    if (base := run.guide_p95) is not None and (p := row["p95_s"]) is not None:
        run.check(name, "p95 of the accepted within 2x the p95 at the guide's load",
                  f"{p:.3f} s vs {base:.3f} s (x{p / base:.1f})", p / base <= 2.0)


def flood(run: Run, name: str = "async flood (4x)") -> None:
    """An open-loop async flood of four times the capacity's throughput: the queue's bound holds Redis."""
    if run.skipped(name, _REDIS_ONLY if run.amqp else None):
        return
    with run.load(run.capacity_users, 4 * run.capacity_rps) as phase:
        time.sleep(run.plan.overload_s / 2)
        maxmemory = int(run.client.info("memory").get("maxmemory", 0))
    row = run.finish(name, _BOTH + " (target {rate:.0f})", "none", phase)
    _refusals_told(run, name, phase, row)
    run.check(name, "Redis memory bounded", f"used_memory max {row['redis_used_memory_max_mib']} MiB, "
              f"maxmemory {maxmemory / 2**20:.0f} MiB, queue max {row['queue_max']}",
              0 < phase.used_memory_max <= maxmemory)


def _refusals_told(run: Run, name: str, phase: Phase, row: Row) -> None:
    seen = sorted({r.status for r in phase.sync + phase.async_})
    without = row["rejected_503_without_retry_after"]
    run.check(name, "only 200, 202 and 503 with Retry-After", f"statuses {seen}, {without} 503 without "
              "Retry-After", set(seen) <= {200, 202, 503} and not without)


def _restart(proc: Process) -> Process:  # the same command again (a Process starts once)
    return Process(proc.argv, log_path=proc.log_path, env=proc.env, cwd=proc.cwd, name=proc.name).start()


def kill_workers(run: Run, name: str = "worker SIGKILL") -> None:
    visibility = config.value("BROKER_VISIBILITY_TIMEOUT")
    if run.skipped(name, None if run.amqp or run.plan.kills else
                   f"--quick (redelivery waits for the {visibility} s visibility timeout)"):
        return
    stores, rng = StoreCounter(run.client).start(), random.Random(8)
    kills, gap = (run.plan.amqp_kills, run.plan.step_s) if run.amqp else (run.plan.kills, run.plan.kill_gap_s)
    with run.load(run.capacity_users, run.capacity_rps / 2) as phase:
        for kill in range(kills):
            time.sleep(gap * rng.uniform(0.5, 1.0))  # load between faults
            if not run.amqp:  # the last one's work given back (its heartbeat silent), the new one holds some
                _wait(lambda: None if run.client.zcard(CONSUMERS_KEY) <= 1 and run.client.hlen("unacked")
                      else "no work held", 60, interval=0.05)
            worker = run.stack.services["worker"]
            worker.signal(signal.SIGKILL)
            worker.wait(30)
            run.stack.services["worker"] = _restart(worker)
            logger.info("worker kill %d/%d", kill + 1, kills)
        time.sleep(gap)
    moments = "at random moments" if run.amqp else "each while it held work"
    row = run.finish(name, _BOTH, f"{kills} x SIGKILL {moments}, replacement started each time", phase)
    stores.close()  # after every redelivered task finished
    twice = stores.twice()
    run.check(name, "nothing accepted lost", f"lost {row['lost']}", row["lost"] == 0)
    run.check(name, "no result stored twice", f"{len(stores.counts)} results stored, {len(twice)} twice"
              f"{': ' + ' '.join(twice[:5]) if twice else ''}", not twice)


def restart_redis(run: Run, name: str = "Redis restart") -> None:
    """SHUTDOWN (which fsyncs the AOF), an outage, the same command again; nothing else restarted."""
    if run.skipped(name, _REDIS_ONLY if run.amqp else None):
        return
    pids = {n: s.pid for n, s in run.stack.services.items()}
    with run.load(run.capacity_users, run.capacity_rps / 2) as phase:
        time.sleep(run.plan.restart_load_s / 3)
        before, down_at = phase.task_ids(), time.monotonic()
        with contextlib.suppress(redis.RedisError):  # the connection closes as the server exits
            run.client.shutdown()
        run.redis.wait(30)
        time.sleep(run.plan.redis_down_s)
        run.redis, up_at = _restart(run.redis), time.monotonic()
        run.redis_up()
        time.sleep(run.plan.restart_load_s * 2 / 3)
    row = run.finish(name, _BOTH, f"SHUTDOWN, down {up_at - down_at:.1f} s, same command again", phase)
    replies, states = phase.sync + phase.async_, run.settle(before, 5)
    during = [r for r in replies if down_at <= r.at - r.seconds and r.at <= up_at]
    # Sync requests in flight at the restart may wait for their deadline (their messages come back
    # after the visibility timeout): recovery is the first request sent after Redis was back and taken.
    first = min((r.at for r in replies if r.status in (200, 202) and r.at - r.seconds > up_at), default=None)
    run.check(name, "503 with Retry-After while down", f"{len(during)} requests while down: "
              f"{dict(Counter(r.status for r in during))}",
              bool(during) and all(r.status == 503 and r.retry_after for r in during))
    run.check(name, "recovered without restarting web or worker", "first request taken "
              f"{'never' if first is None else f'{first - up_at:.1f} s'} after Redis was back",
              first is not None and pids == {n: s.pid for n, s in run.stack.services.items()})
    run.check(name, "every 202 accepted before the restart finished", f"{states['SUCCESS']}/{len(before)} "
              f"SUCCESS, {dict(states)}", states["SUCCESS"] == len(before))
    run.check(name, "nothing accepted lost", f"lost {row['lost']}", row["lost"] == 0)


def _png(width: int, height: int, zeros: bool = False) -> bytes:
    """An 8-bit RGBA PNG of ``width`` x ``height``: every pixel zero, or no pixel data at all."""
    squeeze, row, out = zlib.compressobj(9), bytes(1 + 4 * width), io.BytesIO()
    out.write(b"\x89PNG\r\n\x1a\n")
    putchunk(out, b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0))
    putchunk(out, b"IDAT", b"".join(squeeze.compress(row) for _ in range(height)) + squeeze.flush() if zeros
             else b"")
    putchunk(out, b"IEND")
    return out.getvalue()


def http_bad_inputs(jpeg: bytes) -> list[tuple[str, str, bytes, dict[str, str]]]:
    """(kind, path, body, headers) of each hostile request: a POST to /predict unless the path says else."""
    rng = random.Random(3)
    exif = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + bytes(rng.randrange(256) for _ in range(200))
    exif = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + jpeg[2:]  # an APP1 of junk
    form = b'--b\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n3\r\n--b--\r\n'
    jpg, png, multipart = {"Content-Type": "image/jpeg"}, {"Content-Type": "image/png"}, "multipart/form-data"
    return [
        ("empty body", "", b"", jpg), ("truncated JPEG", "", jpeg[: len(jpeg) * 2 // 5], jpg),
        ("truncated JPEG", "", jpeg[:200], jpg),
        ("wrong format", "", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", png),
        ("wrong format", "", b"<svg xmlns='http://www.w3.org/2000/svg'/>", png),
        ("huge pixel-count PNG header", "", _png(100_000, 100_000), png),
        ("huge pixel-count PNG header", "", _png(7000, 7000), png),
        ("decompression bomb PNG", "", _png(6324, 6324, zeros=True), png),  # just under the pixel limit
        ("malformed EXIF", "", exif, jpg),
        ("wrong content type", "", jpeg, {"Content-Type": "application/json"}),
        ("wrong content type", "", form, {"Content-Type": f"{multipart}; boundary=b"}),
        ("wrong content type", "", jpeg, {"Content-Type": f"{multipart}; boundary=x"}),
        ("oversize body", "", bytes(11 * 2**20), jpg), ("unknown task id", f"/tasks/{uuid.uuid4()}", b"", {}),
        ("unknown task id", "/tasks/..%2F..%2Fetc", b"", {}),
        *(("bad top_k", f"?top_k={v}", jpeg, jpg) for v in ("0", "1001", "abc", "-1", "1e3", "9" * 40)),
        *(("bad timeout", f"?timeout={v}", jpeg, jpg) for v in ("-1", "nan", "abc", "0")),
        ("bad timeout", "", jpeg, {**jpg, "Request-Timeout": "inf"}),
        ("bad timeout", "", jpeg, {**jpg, "X-Request-Timeout": "1e999"})]


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


def bad_inputs(run: Run, name: str = "bad inputs") -> None:
    """Hostile uploads over HTTP, malformed messages into the queue; the worker must keep serving."""
    worker, queue = run.stack.services["worker"], run.stack.queue
    seen: dict[tuple[str, str], Counter[str]] = {}  # (where, kind): outcomes
    for kind, path, body, headers in http_bad_inputs(next(d for d, k in run.photos if k == "image/jpeg")):
        method, path = ("GET", path) if path.startswith("/") else ("POST", "/predict" + path)
        r = call(run.stack.url, method, path, body or None, headers)
        seen.setdefault(("HTTP", kind), Counter())[f"{r.status or 'no answer'} {r.code or ''}".strip()] += 1
    ids = {kind: str(uuid.uuid4()) for kind, *_ in QUEUE_BAD_INPUTS}
    # kombu, not a Celery app: celeryconfig picks its transport for this process' broker, not the stack's.
    with Connection(worker.env["CELERY_BROKER_URL"]) as broker, broker.Producer() as producer:
        for kind, task, body, serializer in QUEUE_BAD_INPUTS:
            producer.publish(body, routing_key=queue, serializer=serializer,
                             headers={"task": task, "id": ids[kind], "lang": "py"})
        _wait(lambda: None if all(run.client.exists(f"celery-task-meta-{i}") for i in ids.values())
              else "not every injected message has a result", 30, interval=0.2)  # a dropped one gets none
        left = sum(int(broker.default_channel.queue_declare(queue=n, passive=True).message_count)
                   for n in (queue, config.async_queue_of(queue))) if run.amqp else run.queued()
    data, kind = run.photos[0]  # once the bad messages are out of the queue and its bound
    good = call(run.stack.url, "POST", "/predict", data, {"Content-Type": kind})
    for kind, task_id in ids.items():
        meta = run.client.get(f"celery-task-meta-{task_id}")
        seen[("queue", kind)] = Counter([json.loads(meta)["status"] if meta else DROPPED])
    run.bad_inputs += [{"where": where, "kind": kind, "count": n.total(), "outcomes": dict(n),
                        "ok": all(o[0] in "1234" or o in ("FAILURE", DROPPED) for o in n)}  # 1xx-4xx, failed
                       for (where, kind), n in seen.items()]
    alive = worker.exited() is None and run.stack.services["worker"] is worker
    run.check(name, "no 5xx and no unanswered request", f"{sum(b['count'] for b in run.bad_inputs)} tried",
              all(b["ok"] for b in run.bad_inputs))
    run.check(name, "the worker kept serving", f"a good upload got {good.status} afterwards; the same worker "
              f"process {'is' if alive else 'is not'} running, queue {'not drained' if left else 'drained'}",
              good.status == 200 and alive)


#: What a run does, in order.
PLAN: tuple[Callable[[Run], None], ...] = (capacity, overload, flood, bad_inputs, kill_workers,
                                          restart_redis)
#: The scenarios table: a row's key and its heading.
HEAD = {"scenario": "scenario", "load": "load held", "faults": "faults injected", "seconds": "s",
        "requests": "requests", "accepted": "accepted", "completed": "completed",
        "failed": "expired or failed", "rejected_503": "rejected 503", "other": "other", "lost": "lost",
        "p95_s": "p95 of accepted sync (s)", "server_p95_s": "its server-side p95 (s)",
        "completed_per_s": "sync 200/s", "redis_used_memory_max_mib": "Redis used_memory max (MiB)",
        "queue_max": "queue max"}
LEGEND = (
    "*accepted*: 200, 202 and 504 (a sync request whose deadline passed after it was queued); *completed*: "
    "200 and 202s that reached SUCCESS; *lost*: accepted but never in a terminal state on `/tasks/<id>`, or "
    "no HTTP answer at all; *its server-side p95*: the web app's own `timings_ms.total`; *queue max*: the "
    f"synchronous and async queues together. Clients pause {BACKOFF_S} s after a 503. A SIGKILLed worker's "
    "messages come back once its heartbeat has been silent `BROKER_DEAD_CONSUMER_SECONDS` (Redis; at once "
    "on RabbitMQ), the visibility timeout being the backstop: the run waits up to "
    f"{REDELIVERY_WAIT_S} s for them.")


def _cells(s: Row) -> list[str]:
    if "not_run" in s:
        return [s["scenario"], f"not run: {s['not_run']}", *["—"] * (len(HEAD) - 2)]
    cells = {k: fmt(v, 3 if k.endswith("p95_s") else 1) if v is None or isinstance(v, float) else str(v)
             for k, v in s.items()}
    if n := s["rejected_503_without_retry_after"]:
        cells["rejected_503"] += f" ({n} without Retry-After)"
    cells["other"] = ", ".join(f"{k}: {v}" for k, v in s["other"].items()) or "0"
    cells["lost"] = f"**{s['lost']}**"
    return [cells[k] for k in HEAD]


def render(result: Row) -> str:
    """The report section from a run's JSON-able result."""
    bad = [[b["where"], b["kind"], str(b["count"]), ", ".join(f"{k} × {v}" for k, v in b["outcomes"].items()),
            "yes" if b["ok"] else "**no**"] for b in result["bad_inputs"]]
    checks = [[c["check"], c["value"], "yes" if c["ok"] else "**no**"] for c in result["checks"]]
    settings = ", ".join(f"{k}={v}" for k, v in result["settings"].items())
    return "\n\n".join([
        f"Generated by `{result['command']}` on {result['date']} ({result['duration_s']:.0f} s).",
        "\n".join(machine_lines(result["machine"])),
        f"Settings (effective, production defaults unless set): {settings}. Capacity: "
        f"{result['capacity_users']} closed-loop users, {result['capacity_rps']:.1f} req/s.",
        "## Scenarios\n\n" + table(list(HEAD.values()), [_cells(s) for s in result["scenarios"]]), LEGEND,
        f"## Bad inputs\n\n{sum(b['count'] for b in result['bad_inputs'])} tried, "
        f"{len({b['kind'] for b in result['bad_inputs']})} kinds.\n\n"
        + table(["where", "kind", "count", "status (HTTP) or final task state (queue)", "ok"], bad),
        "## Checks\n\n" + table(["check", "measured", "met"], checks),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m loadtest.chaos",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (no SIGKILLs)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/reliability.md", help="report (%(default)s)")
    parser.add_argument("--amqp-url", help="run the worker SIGKILLs through this RabbitMQ instead (results "
                        "stay on the run's Redis; overload and Redis restart need a Redis broker: skipped)")
    parser.add_argument("--batch", action="store_true", help="the stack in batch mode (section chaos-batch)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    started = time.monotonic()
    variant = Variant("batch", {"USE_BATCH_PROCESSING": "true"}) if args.batch else INDIVIDUAL
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        port = free_port()
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "RUN_DIR": tmp}
        write_redis_config(env)
        url = f"redis://127.0.0.1:{port}/1"
        client = redis.Redis.from_url(config.with_redis_password(url, config.value("REDIS_PASSWORD")),
                                      socket_timeout=5, socket_connect_timeout=5)
        stack = Stack(variant, redis_url=url, log_dir=Path(tmp) / "logs", broker_url=args.amqp_url)
        redis_proc = Process(command("redis", env), log_path=Path(tmp) / "redis.log", env=env, name="redis")
        run = Run(stack, client, redis_proc.start(), QUICK if args.quick else FULL, bool(args.amqp_url))
        try:
            run.redis_up()
            with stack:
                logger.info("stack ready in %.0f s", stack.wait_ready())
                for step in PLAN:
                    step(run)
        finally:
            client.close()
            run.redis.stop()
    run.scenarios.sort(key=lambda s: "not_run" in s)  # what ran first, in plan order
    stack_env = {**os.environ, **variant.env}
    settings = {k: "default" if (v := config.value(k, stack_env)) is None else v for k in SETTINGS}
    report = render({
        "command": shlex.join(["python", "-m", "loadtest.chaos", *argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "duration_s": time.monotonic() - started,
        "machine": describe_machine(ROOT), "settings": settings,
        "capacity_users": run.capacity_users, "capacity_rps": run.capacity_rps,
        "scenarios": run.scenarios, "bad_inputs": run.bad_inputs, "checks": run.checks})
    section = "chaos-rabbitmq" if args.amqp_url else "chaos-batch" if args.batch else "chaos"
    replace_section(args.out, section, report, title="# Reliability")
    for c in run.checks:
        print(f"{'ok ' if c['ok'] else 'NO '} {c['check']}: {c['value']}")
    print(f"report: {args.out}")
    return 0 if all(c["ok"] for c in run.checks) else 1


if __name__ == "__main__":
    sys.exit(main())
