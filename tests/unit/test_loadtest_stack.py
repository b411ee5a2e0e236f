"""loadtest.stack: variants, Redis DB numbers, and starting/stopping whole process trees.

The stack test runs a stand-in project (a tiny WSGI app under real gunicorn and a
worker that forks a child) from a scratch folder, so no Redis or model is involved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from loadtest.exceptions import StackStartError
from loadtest.stack import Stack, Variant, kill_group, redis_db_url

WSGI = """
import json, os
def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/readyz":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]
    if path == "/predict" and environ.get("CONTENT_TYPE") == "image/jpeg":
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        ok = body[:2] == b"\\xff\\xd8"
        start_response("200 OK" if ok else "400 Bad Request", [("Content-Type", "application/json")])
        return [json.dumps({"prediction": "tabby" if ok else None, "batch_size": 1}).encode()]
    start_response("404 Not Found", [])
    return [b""]
"""
WORKER = """
import json, os, subprocess, sys, time
keys = ["REDIS_URL", "CELERY_BROKER_URL", "CELERY_QUEUE", "WORKER_METRICS_PORT", "WEB_PORT", "BATCH_SIZE"]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
with open("worker-env.json", "w") as fh:
    json.dump({"env": {k: os.environ.get(k) for k in keys}, "pid": os.getpid(), "child": child.pid}, fh)
time.sleep(300)
"""


def test_variant_mode_and_settings() -> None:
    assert Variant("individual", {"USE_BATCH_PROCESSING": "false"}).mode == "individual"
    assert Variant("b", {"USE_BATCH_PROCESSING": "True", "BATCH_SIZE": "8"}).mode == "batch"
    with pytest.raises(ValueError, match="REDIS_URL"):
        Variant("x", {"REDIS_URL": "redis://elsewhere"})


def test_redis_db_numbers() -> None:
    assert redis_db_url("redis://127.0.0.1:6379/11", 2) == "redis://127.0.0.1:6379/13"
    assert redis_db_url("redis://:pw@host:1/15", 0) == "redis://:pw@host:1/15"
    with pytest.raises(ValueError):
        redis_db_url("redis://127.0.0.1:6379/15", 1)
    with pytest.raises(ValueError):
        redis_db_url("redis://127.0.0.1:6379", 0)


def test_refuses_to_flush_db_zero(tmp_path: Path) -> None:
    stack = Stack(Variant("v"), redis_url="redis://127.0.0.1:6379/0", log_dir=tmp_path, project_root=tmp_path)
    with pytest.raises(ValueError, match="DB 0"):
        stack.start()
    assert not list(tmp_path.glob("*.log"))  # nothing was started


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _wait_gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_gone(p) for p in pids):
            return True
        time.sleep(0.05)  # polling the process table: there is nothing to block on
    return False


def test_kill_group_ends_the_children_too() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            "c = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
            "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'])\n"
            "print(c.pid, flush=True); time.sleep(300)",
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    child = int(proc.stdout.readline())
    kill_group(proc, timeout=2.0)  # the child ignores SIGTERM: SIGKILL must reach it
    assert proc.returncode is not None
    assert _wait_gone([child])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "webapp").mkdir()
    (tmp_path / "webapp" / "__init__.py").write_text("")
    (tmp_path / "webapp" / "wsgi.py").write_text(WSGI)
    (tmp_path / "webapp" / "gunicorn.conf.py").write_text(
        "workers = 1\nthreads = 4\nworker_class = 'gthread'\n"
    )
    (tmp_path / "workers").mkdir()
    (tmp_path / "workers" / "__init__.py").write_text("")
    (tmp_path / "workers" / "__main__.py").write_text(WORKER)
    return tmp_path


def test_stack_starts_answers_and_stops_every_process(project: Path) -> None:
    variant = Variant("b4", {"USE_BATCH_PROCESSING": "true", "BATCH_SIZE": "4"})
    with Stack(
        variant,
        redis_url="redis://127.0.0.1:6379/12",
        log_dir=project / "logs",
        project_root=project,
        flush=False,
    ) as stack:
        took = stack.wait_ready(timeout=60)
        assert 0 < took < 60
        info_path = project / "worker-env.json"
        deadline = time.monotonic() + 30
        while not info_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # the stand-in worker writes it at start; nothing to block on
        info = json.loads(info_path.read_text())
        assert info["env"] == {
            "REDIS_URL": "redis://127.0.0.1:6379/12",
            "CELERY_BROKER_URL": "redis://127.0.0.1:6379/12",
            "CELERY_QUEUE": stack.queue,
            "WORKER_METRICS_PORT": str(stack.metrics_port),
            "WEB_PORT": str(stack.web_port),
            "BATCH_SIZE": "4",
        }
        tree = [p.pid for p in psutil.Process(os.getpid()).children(recursive=True)]
        assert info["pid"] in tree and info["child"] in tree
        assert stack.cpu_seconds() > 0
    assert _wait_gone(tree)


def test_a_stack_that_dies_says_why(tmp_path: Path) -> None:
    stack = Stack(
        Variant("broken"),
        redis_url="redis://127.0.0.1:6379/12",
        log_dir=tmp_path / "logs",
        project_root=tmp_path,
        flush=False,
    )
    with stack, pytest.raises(StackStartError, match="exited"):
        stack.wait_ready(timeout=60)
