"""deploy/supervisord.conf and the worker programs deploy/models.py writes, read by supervisor's parser."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from supervisor.datatypes import RestartWhenExitUnexpected
from supervisor.options import ServerOptions

from common.config import value
from deploy import models
from deploy.stack import SERVICES
from tests.support.tiny_models import write_folder

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "deploy" / "supervisord.conf"


def realize(monkeypatch: pytest.MonkeyPatch, run_dir: Path, start_redis: str = "false",
            workers: str = "1") -> ServerOptions:
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("REPO_DIR", str(ROOT))
    monkeypatch.setenv("RUN_DIR", str(run_dir))
    monkeypatch.setenv("START_REDIS", start_redis)
    monkeypatch.setenv("WORKERS", workers)
    assert models.main(["supervisor", str(run_dir / "workers.conf")]) == 0  # as deploy/up.sh does
    options = ServerOptions()
    options.realize(args=["-c", str(CONF)])
    return options


def programs(options: ServerOptions) -> dict[str, Any]:
    return {config.name: config
            for group in options.process_group_configs for config in group.process_configs}


def groups_of(options: ServerOptions) -> dict[str, list[str]]:
    return {group.name: [config.name for config in group.process_configs]
            for group in options.process_group_configs}


@pytest.mark.parametrize(("workers", "start_redis"), [(1, "true"), (3, "false")])
def test_every_program_starts_in_order_through_run_sh_logs_under_run_dir_and_stops_as_a_group(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workers: int, start_redis: str) -> None:
    options = realize(monkeypatch, tmp_path, start_redis, workers=str(workers))
    found = programs(options)
    workers_ = [f"worker-{n}" for n in range(workers)]
    # Started in this order: the broker before its clients; supervisorctl start 'worker:*' starts them all.
    assert groups_of(options) == {"redis": ["redis"], "worker": workers_, "web": ["web"], "nginx": ["nginx"],
                                  "flower": ["flower"]}
    assert sorted(found, key=lambda name: (found[name].priority, name)) == [
        "redis", *workers_, "web", "nginx", "flower"]
    # Redis starts only when asked; RUN_DIR holds supervisord's state.
    assert [name for name, config in found.items() if not config.autostart] == (
        [] if start_redis == "true" else ["redis"])
    assert [options.pidfile, options.logfile, options.server_configs[0]["file"]] == [
        str(tmp_path / name) for name in ("supervisord.pid", "supervisord.log", "supervisor.sock")]
    for name, config in found.items():
        # run.sh passes a worker's N on as --index: node worker-N@host, /metrics on WORKER_METRICS_PORT + N
        argument = f" {name[7:]} efficientnet_lite0" if name.startswith("worker-") else ""
        assert config.command == f"{ROOT}/deploy/run.sh {name.split('-')[0]}{argument}"
        assert config.stdout_logfile == str(tmp_path / "logs" / f"{name}.log")
        assert config.redirect_stderr
        # Stopping reaches every child: the whole group is signalled.
        assert name == "redis" or (config.stopasgroup and config.killasgroup), name
    # nginx's graceful shutdown answers the requests in flight, and it stops before gunicorn.
    assert found["nginx"].stopsignal == signal.SIGQUIT and found["nginx"].priority > found["web"].priority


@pytest.mark.parametrize(("argv", "execs"), [
    *(([name], f"-m deploy.stack exec {name}") for name in SERVICES if name != "worker"),
    (["worker", "2", "pets"], "-m deploy.stack exec worker --index 2 --model pets"),
])
def test_run_sh_execs_deploy_stacks_command_for_every_program(tmp_path: Path, argv: list[str],
                                                              execs: str) -> None:
    python = tmp_path / "python"  # says what it would run; the scripts' own helpers run for real
    python.write_text(f'#!/bin/sh\n[ "$2" = deploy.stack ] && exec echo "$@"\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = {"PATH": os.environ["PATH"], "VENV_BIN": str(tmp_path), "RUN_DIR": str(tmp_path)}
    done = subprocess.run([ROOT / "deploy" / "run.sh", *argv], capture_output=True, text=True, env=env)
    assert (done.returncode, done.stdout.strip()) == (0, execs), done.stderr


def test_every_model_gets_its_program_numbered_on_from_the_last(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    for name, toml in (("efficientnet_lite0", ""), ("pets", "workers = 2\n"), ("broken", "[oops\n")):
        (write_folder(repository / name, toml=toml) / "model.pt2").write_bytes(b"")
    (repository / "not a name").mkdir()
    monkeypatch.setenv("MODEL_REPOSITORY", str(repository))
    options = realize(monkeypatch, tmp_path / "run", workers="3")
    assert groups_of(options) == {
        "redis": ["redis"], "worker": ["worker-0", "worker-1", "worker-2"],
        "model-broken": ["model-broken-3"], "model-pets": ["model-pets-4", "model-pets-5"],
        "web": ["web"], "nginx": ["nginx"], "flower": ["flower"]}
    found = programs(options)
    # One template for every worker program: the log and the rest as the default model's (above).
    assert found["model-pets-5"].command == f"{ROOT}/deploy/run.sh worker 5 pets"
    # The warm shutdown may take as long as a task's hard time limit.
    assert found["model-pets-5"].stopwaitsecs == found["worker-0"].stopwaitsecs > value("TASK_TIME_LIMIT", {})
    # A worker that cannot start (exit 2) is not restarted in a loop; a crash is.
    assert found["model-broken-3"].exitcodes == [0, 2]
    assert found["model-broken-3"].autorestart is RestartWhenExitUnexpected
    monkeypatch.setenv("MODEL", "resnet50")  # a built-in architecture: MODEL reaches the worker as it is
    assert models.plan()[0] == models.WorkerGroup("worker", None, 3, 0)


@pytest.mark.parametrize("workers", ["0", "two", "-1", ""])
def test_up_refuses_a_bad_workers_before_starting_anything(tmp_path: Path, workers: str) -> None:
    env = {"PATH": os.environ["PATH"], "RUN_DIR": str(tmp_path), "WORKERS": workers or " "}
    done = subprocess.run(["bash", str(ROOT / "deploy" / "up.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1 and "WORKERS must be a whole number >= 1" in done.stderr
    assert list(tmp_path.iterdir()) == []  # no supervisord, no stack.env, no logs
