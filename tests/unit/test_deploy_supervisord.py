"""deploy/supervisord.conf, read by supervisor's own parser as `make up` starts it."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from supervisor.options import ServerOptions

from deploy.stack import SERVICES

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "deploy" / "supervisord.conf"
PROGRAMS = ["redis", "worker", "web", "flower"]
#: celeryconfig's default hard time limit: the worker's warm shutdown may take that long.
TASK_TIME_LIMIT = 45


def realize(monkeypatch: pytest.MonkeyPatch, run_dir: Path, start_redis: str = "false") -> ServerOptions:
    (run_dir / "logs").mkdir(exist_ok=True)
    monkeypatch.setenv("REPO_DIR", str(ROOT))
    monkeypatch.setenv("RUN_DIR", str(run_dir))
    monkeypatch.setenv("START_REDIS", start_redis)
    options = ServerOptions()
    options.realize(args=["-c", str(CONF)])
    return options


def programs(options: ServerOptions) -> dict[str, Any]:
    return {config.name: config
            for group in options.process_group_configs for config in group.process_configs}


def test_every_program_starts_through_run_sh_and_logs_under_run_dir(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    found = programs(realize(monkeypatch, tmp_path))
    # Started in this order: the broker before its clients.
    assert sorted(found, key=lambda name: found[name].priority) == PROGRAMS
    for name, config in found.items():
        assert config.command == f"{ROOT}/deploy/run.sh {name}"
        assert config.stdout_logfile == str(tmp_path / "logs" / f"{name}.log")
        assert config.redirect_stderr


def test_run_sh_execs_deploy_stacks_command_for_every_program() -> None:
    script = (ROOT / "deploy" / "run.sh").read_text()
    assert ('\n    web | worker | flower | redis)\n'
            '        exec "$VENV_BIN/python" -m deploy.stack exec "$1" ;;') in script
    assert set(PROGRAMS) == set(SERVICES)


@pytest.mark.parametrize("start_redis", ["true", "false"])
def test_redis_starts_only_when_up_sh_asks(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, start_redis: str) -> None:
    found = programs(realize(monkeypatch, tmp_path, start_redis))
    assert found["redis"].autostart is (start_redis == "true")
    assert all(found[name].autostart for name in ("worker", "web", "flower"))


def test_pid_socket_and_logs_live_in_run_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    options = realize(monkeypatch, tmp_path)
    assert options.pidfile == str(tmp_path / "supervisord.pid")
    assert options.logfile == str(tmp_path / "supervisord.log")
    assert options.server_configs[0]["file"] == str(tmp_path / "supervisor.sock")


def test_stopping_waits_for_running_work_and_reaches_every_child(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    found = programs(realize(monkeypatch, tmp_path))
    assert found["worker"].stopwaitsecs > TASK_TIME_LIMIT
    for name in ("worker", "web", "flower"):
        assert found[name].stopasgroup and found[name].killasgroup, name
