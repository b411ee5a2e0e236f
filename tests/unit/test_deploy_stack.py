"""deploy/stack.py: command lines, nginx's config, free ports, the readiness wait and process-group kills."""
from __future__ import annotations

import json
import os
import re
import signal
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

import psutil
import pytest
import redis

from deploy import redisurl, stack
from webapp import MULTIPART_OVERHEAD_BYTES

S = TypeVar("S", bound=socketserver.BaseServer)


class _Readyz(BaseHTTPRequestHandler):
    """Answers with the next status of ``server.statuses`` (the last one repeats)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        statuses: list[int] = self.server.statuses  # type: ignore[attr-defined]
        status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
        body = b'{"status": "ok"}' if status == 200 else b'{"error": "no worker replied to ping"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving(server: S) -> Iterator[S]:
    """``server`` answering from a thread during the block (for the other deploy tests too)."""
    server.daemon_threads = True  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def private_redis(argv: list[str], env: dict[str, str] | None, port: int, password: str, maxmemory: int,
                  log_path: Path) -> Iterator[stack.Process]:
    """Redis started by ``argv``, checked: it asks for ``password``, keeps an AOF fsynced every second
    and, full at ``maxmemory`` bytes, refuses writes instead of evicting tasks (for test_compose too)."""
    with stack.Process(argv, log_path=log_path, env=env, name="redis") as server:
        assert redisurl.wait(f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0", 15), server.log()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, socket_timeout=5).ping()
        with redis.Redis(port=port, password=password, socket_timeout=5) as client:
            config = client.config_get("*")
        assert [config[key] for key in ("appendonly", "appendfsync", "maxmemory", "maxmemory-policy")] == [
            "yes", "everysec", str(maxmemory), "noeviction"], server.log()
        yield server


@pytest.fixture
def readyz() -> Iterator[tuple[str, list[int]]]:
    """A /readyz URL and the statuses it will answer with (for test_deploy_wait_ready too)."""
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _Readyz)) as server:
        server.statuses = [503]  # type: ignore[attr-defined]
        yield f"http://127.0.0.1:{server.server_port}/readyz", server.statuses  # type: ignore[attr-defined]


def test_commands_are_the_ones_make_up_runs(tmp_path: Path) -> None:
    env = {"FLOWER_PORT": "5599", "BIND_HOST": "0.0.0.0", "FLOWER_BASIC_AUTH": "admin:s3cret",
           "REDIS_URL": "redis://127.0.0.1:6390/0", "RUN_DIR": str(tmp_path)}
    # gunicorn on a socket in RUN_DIR, unless WEB_UPSTREAM says otherwise; nginx in front of it
    assert stack.command("web", env, python="py") == [
        "py", "-m", "gunicorn", "-c", "webapp/gunicorn.conf.py", "--bind", f"unix:{tmp_path}/web.sock",
        "webapp.wsgi:app"]
    assert "0.0.0.0:8000" in stack.command("web", {**env, "WEB_UPSTREAM": "0.0.0.0:8000"})
    nginx = stack.command("nginx", env)
    assert Path(nginx[0]).name == "nginx" and nginx[1:] == ["-e", "stderr", "-c", f"{tmp_path}/nginx.conf"]
    assert (tmp_path / "nginx.conf").read_text() == stack.nginx_config(env)
    # No login on the command line: Flower reads FLOWER_BASIC_AUTH itself.
    assert stack.command("flower", env, python="py") == [
        "py", "-m", "celery", "-A", "workers", "flower", "--port=5599", "--address=0.0.0.0"]
    redis = stack.command("redis", env)
    assert redis[:6] == ["redis-server", f"{tmp_path}/redis.conf", "--bind", "127.0.0.1", "--port", "6390"]
    assert redis[-2:] == ["--dir", str(tmp_path)]  # its options at work: test_the_local_redis_...
    assert "--maxmemory 2gb" in " ".join(stack.command("redis", {**env, "REDIS_MAXMEMORY": "2GB"}))
    with pytest.raises(ValueError, match="unknown service"):
        stack.command("beat", env)


def test_nginx_config_holds_the_settings_and_nginx_accepts_it_or_says_how_to_install_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {"RUN_DIR": str(tmp_path), "WEB_PORT": str(stack.free_port()), "WEB_READ_TIMEOUT": "2.5",
           "MAX_UPLOAD_MB": "1", "RESULT_TIMEOUT": "20"}
    config = stack.nginx_config(env)
    for line in (f"listen 127.0.0.1:{env['WEB_PORT']};", f"server unix:{tmp_path}/web.sock;",
                 "client_header_timeout 2500ms;", "client_body_timeout 2500ms;",
                 f"client_max_body_size {1024 * 1024 + MULTIPART_OVERHEAD_BYTES};",
                 "proxy_read_timeout 50000ms;", f"pid {tmp_path}/nginx/nginx.pid;", "access_log off;"):
        assert line in config
    error = json.loads(re.search(r"return 413 '(.*)';", config).group(1))["error"]  # type: ignore[union-attr]
    assert set(error) == {"code", "message"} and error["code"] == "payload_too_large"  # the app's shape
    checked = subprocess.run([*stack.command("nginx", env), "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert "listen [::1]:8000;" in stack.nginx_config({"BIND_HOST": "::1", "WEB_PORT": "8000"})
    # As root, its workers too: nobody, nginx's default, cannot reach the socket in a 0700 RUN_DIR.
    monkeypatch.setattr(stack.os, "geteuid", lambda: 0)
    assert "\nuser root;\n" in stack.nginx_config({})
    monkeypatch.setattr(stack.os, "geteuid", lambda: 1000)
    assert "user " not in stack.nginx_config({})
    # Not installed: it says how to install it, and writes no config.
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("RUN_DIR", str(tmp_path / "bare"))
    monkeypatch.setattr(stack, "_SBIN", ())
    with pytest.raises(stack.StackError, match="system_deps.sh up"):
        stack.command("nginx")
    assert stack.main(["command", "nginx"]) == 2 and not (tmp_path / "bare").exists()


def test_each_worker_has_its_own_node_name_and_metrics_port(capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # supervisord's worker N of WORKERS (deploy/run.sh worker N): Celery expands %h to the host name.
    assert stack.main(["command", "worker", "--index", "2"]) == stack.main(["command", "worker"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{sys.executable} -m workers --hostname=worker-2@%h",
                                                    f"{sys.executable} -m workers"]
    for name, index in (("web", 0), ("worker", -1)):
        with pytest.raises(ValueError, match="only the worker takes an index"):
            stack.command(name, {}, index=index)
    with pytest.raises(SystemExit):
        stack.main(["command", "web", "--index", "1"])
    # `exec worker --index 1` (deploy/run.sh worker 1), stopped at the exec: its node name and metrics port.
    execs: list[tuple[str, list[str], str | None]] = []
    monkeypatch.setenv("WORKER_METRICS_PORT", "9900")  # restored after the test, as exec changes it
    monkeypatch.setattr(stack.os, "execvp", lambda file, argv: execs.append(
        (file, argv, os.environ.get("WORKER_METRICS_PORT"))))
    monkeypatch.setattr(stack.os, "chdir", lambda path: None)
    stack.main(["exec", "worker", "--index", "1"])
    assert execs == [(sys.executable, [sys.executable, "-m", "workers", "--hostname=worker-1@%h"], "9901")]
    assert stack.worker_metrics_port(5, {"WORKER_METRICS_PORT": "0"}) == 0  # off stays off
    with pytest.raises(ValueError, match="past 65535"):
        stack.worker_metrics_port(1, {"WORKER_METRICS_PORT": "65535"})
    with pytest.raises(ValueError, match=">= 0"):
        stack.worker_metrics_port(-1, {})


def test_probe_says_when_nothing_answers() -> None:
    # A status and its reason: test_deploy_wait_ready's, whose last line is probe's.
    closed = stack.probe(f"http://127.0.0.1:{stack.free_port()}/readyz", timeout=1)
    assert closed.status is None and str(closed).startswith("no answer")


#: A parent that starts a child and sleeps; the child ignores SIGTERM, then says its pid.
_TREE = ("import subprocess, sys, time\n"
         "subprocess.Popen([sys.executable, '-c', 'import os, signal, time; "
         "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(os.getpid(), flush=True); time.sleep(300)'])\n"
         "time.sleep(300)")


def test_process_group_kill_reaches_a_child_that_ignores_sigterm_and_an_exit_names_the_log(
        tmp_path: Path) -> None:
    proc = stack.Process([sys.executable, "-c", _TREE], log_path=tmp_path / "tree.log", grace=1.0)
    with proc:
        stack.wait_until(lambda: None if proc.log().strip() else "not yet", 30, interval=0.02,
                         give_up=proc.exited)
        child = psutil.Process(int(proc.log()))
        assert child in psutil.Process(proc.pid).children(recursive=True) and proc.exited() is None
    assert proc.proc is not None and proc.proc.returncode == -signal.SIGTERM  # the leader took SIGTERM
    # The child ignored it: SIGKILL to the group ended it (reaped, or a zombie nobody waits for).
    _, alive = psutil.wait_procs([child], timeout=10)
    assert all(p.status() == psutil.STATUS_ZOMBIE for p in alive)
    proc = stack.Process([sys.executable, "-c", "import sys; print('bad config'); sys.exit(3)"],
                         log_path=tmp_path / "logs" / "worker.log", name="worker").start()
    assert proc.wait(30) == 3
    assert proc.exited() == "worker exited with 3; last log lines:\nbad config"
    proc.stop()  # harmless once it has exited


def test_the_local_redis_asks_for_the_password_from_a_private_file_and_keeps_an_aof(tmp_path: Path) -> None:
    # The command `make up` runs, started for real on a free port; the password, however quoted.
    port, password = stack.free_port(), 'se s3"et\\'
    env = {"RUN_DIR": str(tmp_path / "run"), "REDIS_URL": f"redis://127.0.0.1:{port}/0",
           "REDIS_PASSWORD": password, "REDIS_MAXMEMORY": "32mb"}
    path = stack.write_redis_config(env)
    assert path == tmp_path / "run" / "redis.conf" and path.stat().st_mode & 0o777 == 0o600
    argv = stack.command("redis", env)
    assert not any('s3"' in word for word in argv)
    with private_redis(argv, None, port, password, 32 * 2**20, tmp_path / "redis.log"):
        pass
    assert "requirepass" not in stack.write_redis_config({"RUN_DIR": env["RUN_DIR"]}).read_text()
    with pytest.raises(ValueError, match="one line"):
        stack.redis_config({"REDIS_PASSWORD": "a\nrequirepass b"})
