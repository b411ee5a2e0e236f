"""deploy/wait_ready.py: the shell's wait for /readyz, with exit codes for `make up`."""
from __future__ import annotations

import pytest

from deploy import wait_ready
from tests.unit.test_deploy_stack import readyz  # noqa: F401 - the fixture

Readyz = tuple[str, list[int]]


def test_0_once_ready(readyz: Readyz, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    url, statuses = readyz
    statuses[:] = [503, 503, 200]
    assert wait_ready.main([url, "--timeout", "10", "--interval", "0.01"]) == 0
    assert statuses == [200]
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"ready: {url} answered 200")


def test_1_after_the_timeout_with_the_last_reason(readyz: Readyz,  # noqa: F811
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = readyz
    assert wait_ready.main([url, "--timeout", "0.2", "--interval", "0.01"]) == 1
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("not ready after") and "no worker replied" in last


def test_timeout_0_probes_once(readyz: Readyz) -> None:  # noqa: F811
    url, statuses = readyz
    statuses[:] = [503, 200]
    assert wait_ready.main([url, "--timeout", "0"]) == 1
    assert statuses == [200]


def test_2_at_once_when_a_program_is_fatal(readyz: Readyz, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                           capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = readyz
    monkeypatch.setattr(wait_ready, "program_states", lambda _path: {"web": "RUNNING", "worker": "FATAL"})
    assert wait_ready.main([url, "--timeout", "60", "--interval", "0.01", "--supervisor-socket", "x"]) == 2
    assert capsys.readouterr().out.splitlines()[-1] == \
        "giving up: worker (FATAL) stopped and will not restart; see its log"


def test_progress_names_the_program_states(readyz: Readyz, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                           capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = readyz
    monkeypatch.setattr(wait_ready, "program_states", lambda _path: {"worker": "STARTING"})
    wait_ready.main([url, "--timeout", "0.05", "--interval", "0.01", "--supervisor-socket", "x"])
    assert "[worker STARTING]" in capsys.readouterr().out.splitlines()[0]


def test_no_supervisord_answering_means_no_states(tmp_path: object) -> None:
    assert wait_ready.program_states(f"{tmp_path}/missing.sock") == {}
