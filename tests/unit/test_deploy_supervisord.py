"""deploy/supervisord.conf and the worker programs deploy/models.py writes for it, read by
supervisor's own parser as `make up` starts it."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from supervisor.datatypes import RestartWhenExitUnexpected
from supervisor.options import ServerOptions

from deploy import models
from deploy.stack import SERVICES
from tests.support.tiny_models import write_folder

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "deploy" / "supervisord.conf"
PROGRAMS = ["redis", "worker", "web", "flower"]
#: supervisord's process names: the worker program is a group of WORKERS processes.
PROCESSES = ["redis", "worker-0", "web", "flower"]
#: celeryconfig's default hard time limit: the worker's warm shutdown may take that long.
TASK_TIME_LIMIT = 45


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


def groups(options: ServerOptions) -> dict[str, list[str]]:
    return {group.name: [config.name for config in group.process_configs]
            for group in options.process_group_configs}


def test_every_program_starts_through_run_sh_and_logs_under_run_dir(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    found = programs(realize(monkeypatch, tmp_path))
    # Started in this order: the broker before its clients.
    assert sorted(found, key=lambda name: found[name].priority) == PROCESSES
    for name, config in found.items():
        argument = " 0 efficientnet_lite0" if name == "worker-0" else ""  # its process_num and model
        assert config.command == f"{ROOT}/deploy/run.sh {name.split('-')[0]}{argument}"
        assert config.stdout_logfile == str(tmp_path / "logs" / f"{name}.log")
        assert config.redirect_stderr


@pytest.mark.parametrize("workers", [1, 3])
def test_workers_sets_the_number_of_worker_processes(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, workers: int) -> None:
    options = realize(monkeypatch, tmp_path, workers=str(workers))
    names = [f"worker-{n}" for n in range(workers)]
    assert groups(options)["worker"] == names  # supervisorctl start 'worker:*' starts them all
    found = programs(options)
    for n, name in enumerate(names):
        # run.sh passes N on as --index: node worker-N@host, /metrics on WORKER_METRICS_PORT + N
        assert found[name].command == f"{ROOT}/deploy/run.sh worker {n} efficientnet_lite0"
        assert found[name].stdout_logfile == str(tmp_path / "logs" / f"{name}.log")
        assert found[name].stopwaitsecs > TASK_TIME_LIMIT
    assert {name: len(members) for name, members in groups(options).items()} == {
        "redis": 1, "worker": workers, "web": 1, "flower": 1}


def test_run_sh_execs_deploy_stacks_command_for_every_program() -> None:
    script = (ROOT / "deploy" / "run.sh").read_text()
    assert ('\n    web | flower | redis)\n'
            '        exec "$VENV_BIN/python" -m deploy.stack exec "$1" ;;') in script
    assert ('\n        exec "$VENV_BIN/python" -m deploy.stack exec worker --index "${2:-0}" '
            '${3:+--model "$3"} ;;') in script
    assert set(PROGRAMS) == set(SERVICES)


def test_the_scripts_give_workers_a_default_and_start_every_worker() -> None:
    common = (ROOT / "deploy" / "common.sh").read_text()
    up = (ROOT / "deploy" / "up.sh").read_text()
    assert "\nexport WORKERS=${WORKERS:-1}\n" in common  # deploy/models.py reads it
    # A change of these is seen by the next make up.
    assert "STACK_ENV_RE='^(WORKERS|MODEL|MODEL_WEIGHTS|MODEL_REPOSITORY|DEFAULT_MODEL|" in common
    # Every model's program, whatever the models are: from the file supervisord read.
    assert 'set -- $(worker_programs) web flower' in up and 'ctl start "$@"' in up
    assert "ctl start worker " not in up


def test_every_model_gets_its_program_numbered_on_from_the_last(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    repository = tmp_path / "models"
    for name, toml in (("efficientnet_lite0", ""), ("pets", "workers = 2\n"), ("broken", "[oops\n")):
        (write_folder(repository / name, toml=toml) / "model.pt2").write_bytes(b"")
    (repository / "not a name").mkdir()
    monkeypatch.setenv("MODEL_REPOSITORY", str(repository))
    options = realize(monkeypatch, tmp_path / "run", workers="3")
    assert groups(options) == {
        "redis": ["redis"], "worker": ["worker-0", "worker-1", "worker-2"],
        "model-broken": ["model-broken-3"], "model-pets": ["model-pets-4", "model-pets-5"],
        "web": ["web"], "flower": ["flower"]}
    found = programs(options)
    assert found["model-pets-5"].command == f"{ROOT}/deploy/run.sh worker 5 pets"
    assert found["worker-1"].command == f"{ROOT}/deploy/run.sh worker 1 efficientnet_lite0"
    assert found["model-pets-5"].stdout_logfile == str(tmp_path / "run" / "logs" / "model-pets-5.log")
    assert found["model-pets-5"].stopwaitsecs == found["worker-0"].stopwaitsecs > TASK_TIME_LIMIT
    # A worker that cannot start (exit 2) is not restarted in a loop; a crash is.
    assert found["model-broken-3"].exitcodes == [0, 2]
    assert found["model-broken-3"].autorestart is RestartWhenExitUnexpected


def test_a_built_in_architecture_stands_in_for_the_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL", "resnet50")
    # MODEL reaches the worker as it is.
    assert models.plan() == [models.WorkerGroup("worker", None, 1, 0)]


@pytest.mark.parametrize("start_redis", ["true", "false"])
def test_redis_starts_only_when_up_sh_asks(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, start_redis: str) -> None:
    found = programs(realize(monkeypatch, tmp_path, start_redis))
    assert found["redis"].autostart is (start_redis == "true")
    assert all(found[name].autostart for name in ("worker-0", "web", "flower"))


def test_pid_socket_and_logs_live_in_run_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    options = realize(monkeypatch, tmp_path)
    assert options.pidfile == str(tmp_path / "supervisord.pid")
    assert options.logfile == str(tmp_path / "supervisord.log")
    assert options.server_configs[0]["file"] == str(tmp_path / "supervisor.sock")


def test_stopping_waits_for_running_work_and_reaches_every_child(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    found = programs(realize(monkeypatch, tmp_path))
    assert found["worker-0"].stopwaitsecs > TASK_TIME_LIMIT
    for name in ("worker-0", "web", "flower"):
        assert found[name].stopasgroup and found[name].killasgroup, name


@pytest.mark.parametrize("workers", ["0", "two", "-1", ""])
def test_up_refuses_a_bad_workers_before_starting_anything(tmp_path: Path, workers: str) -> None:
    env = {"PATH": os.environ["PATH"], "RUN_DIR": str(tmp_path), "WORKERS": workers or " "}
    done = subprocess.run(["bash", str(ROOT / "deploy" / "up.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1
    assert "WORKERS must be a whole number >= 1" in done.stderr
    assert list(tmp_path.iterdir()) == []  # no supervisord, no stack.env, no logs
