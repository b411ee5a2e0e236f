"""deploy/wait_ready.py: the shell's wait for /readyz, with exit codes for `make up`."""
from __future__ import annotations

from pathlib import Path

import pytest

from deploy import wait_ready
from tests.unit.test_deploy_stack import readyz  # noqa: F401 - the fixture

Readyz = tuple[str, list[int]]


def test_0_once_ready_1_after_the_timeout_with_the_last_reason_and_timeout_0_probes_once(
        readyz: Readyz, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    url, statuses = readyz
    assert wait_ready.main([url, "--timeout", "0.2", "--interval", "0.01"]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("not ready after") and "no worker replied" in last
    statuses[:] = [503, 503, 200]
    assert wait_ready.main([url, "--timeout", "10", "--interval", "0.01"]) == 0
    assert statuses == [200]
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"==> waiting up to 10s for {url}" and out[-1].startswith(f"ready: {url} answered 200")
    statuses[:] = [503, 200]  # --timeout 0 probes once
    assert wait_ready.main([url, "--timeout", "0"]) == 1
    assert statuses == [200] and "waiting" not in capsys.readouterr().out


def test_2_at_once_when_a_program_is_fatal_and_progress_names_the_states(
        readyz: Readyz, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    url, _ = readyz
    monkeypatch.setattr(wait_ready, "program_states", lambda _path: {"worker": "STARTING"})
    wait_ready.main([url, "--timeout", "0.05", "--interval", "0.01", "--supervisor-socket", "x"])
    assert "[worker STARTING]" in capsys.readouterr().out
    monkeypatch.setattr(wait_ready, "program_states", lambda _path: {"web": "RUNNING", "worker": "FATAL"})
    assert wait_ready.main([url, "--timeout", "60", "--interval", "0.01", "--supervisor-socket", "x"]) == 2
    assert capsys.readouterr().out.splitlines()[-1] == \
        "giving up: worker (FATAL) stopped and will not restart; see its log"


def test_another_models_stopped_workers_do_not_stop_the_wait() -> None:
    states = {"web": "RUNNING", "worker-0": "RUNNING", "model-broken-1": "FATAL"}
    assert wait_ready.fatal_programs(lambda: states) is None
    states["worker-0"] = "EXITED"  # exit status 2: it cannot start
    assert wait_ready.fatal_programs(lambda: states) == \
        "worker-0 (EXITED) stopped and will not restart; see its log"


def test_the_default_url_is_the_stacks_readyz(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BIND_HOST", "0.0.0.0")
    monkeypatch.setenv("WEB_PORT", "8123")
    assert wait_ready.ready_url() == "http://127.0.0.1:8123/readyz"
    assert wait_ready.program_states(f"{tmp_path}/missing.sock") == {}  # no supervisord: no states
