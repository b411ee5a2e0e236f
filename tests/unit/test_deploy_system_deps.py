"""deploy/system_deps.sh: what `make test` and `make up` install, or the command it prints.

The script runs with a PATH (and sbin) of fakes only: `id` says which user we are, `apt-get` records its
arguments and "installs" a program by creating it; the other programs exist only when a test creates them.
"""
from __future__ import annotations

import os
import shutil
import socketserver
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.stack import free_port
from tests.unit.test_deploy_stack import serving

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "system_deps.sh"
BASH = shutil.which("bash") or "/bin/bash"

_FAKE_APT_GET = """#!/bin/sh
echo "DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*" >>"$APT_LOG"
[ "$1" = install ] || exit 0
for arg; do
    case $arg in
        -* | install) ;;
        *) printf '#!/bin/sh\\n' >"$FAKE_BIN/$arg"; /bin/chmod +x "$FAKE_BIN/$arg" ;;
    esac
done
"""
_FAKE_RABBITMQ = {"rabbitmq-server": '#!/bin/sh\necho "$*" >>"$FAKE_BIN/rabbitmq.log"\n',
                  "rabbitmq-diagnostics": '#!/bin/sh\n[ -e "$FAKE_BIN/rabbitmq.log" ]\n',
                  "sleep": "#!/bin/sh\n"}


@dataclass
class Machine:
    """A PATH of fakes, and the script run against it."""

    bin: Path
    env: dict[str, str]

    def install(self, *programs: str, body: str | None = None, where: Path | None = None) -> None:
        for program in programs:
            path = (where or self.bin) / program
            path.write_text(body if body is not None else _FAKE_RABBITMQ.get(program, "#!/bin/sh\n"))
            path.chmod(0o755)

    def run(self, target: str, uid: int = 1000) -> subprocess.CompletedProcess[str]:
        return subprocess.run([BASH, str(SCRIPT), target], env={**self.env, "FAKE_UID": str(uid)},
                              capture_output=True, text=True, timeout=30, check=False)

    def apt_calls(self) -> list[str]:
        log = Path(self.env["APT_LOG"])
        return log.read_text().splitlines() if log.exists() else []

    def rabbitmq_starts(self) -> list[str]:
        log = self.bin / "rabbitmq.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    fake_bin, sbin = tmp_path / "bin", tmp_path / "sbin"
    fake_bin.mkdir()
    sbin.mkdir()
    (fake_bin / "dirname").symlink_to(shutil.which("dirname") or "/usr/bin/dirname")
    found = Machine(fake_bin, {
        "PATH": str(fake_bin), "SBIN_PATH": str(sbin), "FAKE_BIN": str(fake_bin),
        "APT_LOG": str(tmp_path / "apt.log"),
        # deploy/common.sh's py(): this interpreter, for deploy.redisurl
        "VENV_BIN": str(Path(sys.executable).parent),
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "TEST_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}//",
        "RABBITMQ_START_TIMEOUT": "10",
    })
    found.install("id", body='#!/bin/sh\necho "$FAKE_UID"\n')
    found.install("apt-get", body=_FAKE_APT_GET)
    return found


class _AmqpStart(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(8)
        self.request.sendall(b"\x01\x00\x00")  # the start of a connection.start method frame


class _Pong(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(64)
        self.request.sendall(b"+PONG\r\n")


@pytest.fixture
def amqp_answering(machine: Machine) -> Iterator[None]:
    """TEST_AMQP_URL where something starts the AMQP handshake, as a running RabbitMQ does."""
    with serving(socketserver.TCPServer(("127.0.0.1", 0), _AmqpStart)) as server:
        machine.env["TEST_AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{server.server_address[1]}//"
        yield


@pytest.fixture
def redis_answering(machine: Machine) -> Iterator[None]:
    """REDIS_URL where something answers PING with PONG, as a running Redis does."""
    with serving(socketserver.TCPServer(("127.0.0.1", 0), _Pong)) as server:
        machine.env["REDIS_URL"] = f"redis://127.0.0.1:{server.server_address[1]}/0"
        yield


@pytest.mark.parametrize("redis_answers", [False, True])
def test_nothing_to_do_when_everything_is_installed_or_answers(
        machine: Machine, amqp_answering: None, redis_answers: bool, request: pytest.FixtureRequest) -> None:
    if redis_answers:  # a Redis that answers makes redis-server unneeded
        request.getfixturevalue("redis_answering")
    machine.install("chromium", "nginx", *() if redis_answers else ("redis-server",))
    result = machine.run("test")
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert machine.apt_calls() == [] and machine.rabbitmq_starts() == []


@pytest.mark.parametrize(("installed", "missing"), [
    ((), "chromium nginx redis-server rabbitmq-server"),
    (("redis-server", "rabbitmq-server", "rabbitmq-diagnostics", "sbin/nginx"), "chromium"),
])
def test_not_root_stops_at_once_with_the_command_naming_what_is_missing(
        machine: Machine, installed: tuple[str, ...], missing: str) -> None:
    for program in installed:  # sbin/: Debian's place for nginx, off a user's PATH
        machine.install(Path(program).name, where=Path(machine.env["SBIN_PATH"]) if "/" in program else None)
    result = machine.run("test", uid=1000)
    assert result.returncode == 1
    assert f"  sudo apt-get install -y {missing}\n" in result.stderr
    assert machine.apt_calls() == []


def test_root_installs_what_is_missing_without_questions_or_recommends(machine: Machine) -> None:
    machine.install("redis-server", *_FAKE_RABBITMQ)
    result = machine.run("test", uid=0)
    assert result.returncode == 0, result.stderr
    assert machine.apt_calls() == [
        "DEBIAN_FRONTEND=noninteractive update -qq",
        "DEBIAN_FRONTEND=noninteractive install -y -qq --no-install-recommends chromium nginx",
    ]
    assert (machine.bin / "chromium").exists() and (machine.bin / "nginx").exists()


NEVER_ANSWERS = {"rabbitmq-diagnostics": "#!/bin/sh\nexit 69\n"}
REMOTE = {"TEST_AMQP_URL": "amqp://guest:guest@192.0.2.1:5672//"}


@pytest.mark.parametrize(("uid", "env", "fakes", "returncode", "starts", "says"), [
    (0, {}, {}, 0, ["-detached"], "==> RabbitMQ answers"),
    (1000, {}, {}, 1, [], "  sudo rabbitmq-server -detached\n"),
    (0, {}, NEVER_ANSWERS, 1, ["-detached"], "did not answer rabbitmq-diagnostics ping within 10s"),
    (0, REMOTE, {}, 0, [], "the RabbitMQ tests will be skipped")])
def test_rabbitmq_is_started_as_root_or_the_command_printed_or_a_remote_one_left(
        machine: Machine, uid: int, env: dict[str, str], fakes: dict[str, str], returncode: int,
        starts: list[str], says: str) -> None:
    machine.install("chromium", "nginx", "redis-server", *_FAKE_RABBITMQ)
    for name, body in fakes.items():
        machine.install(name, body=body)
    machine.env.update(env)
    result = machine.run("test", uid=uid)
    assert (result.returncode, machine.rabbitmq_starts()) == (returncode, starts), result.stderr
    assert says in result.stdout + result.stderr


def test_root_fails_when_apt_get_does(machine: Machine) -> None:
    machine.install("apt-get", body="#!/bin/sh\nexit 100\n")
    assert machine.run("test", uid=0).returncode == 100


@pytest.mark.parametrize(("redis_url", "missing"), [
    ("closed", "nginx redis-server"),
    ("answering", "nginx"),
    ("redis://192.0.2.1:6379/0", "nginx"),  # a remote one is up.sh's to refuse
])
def test_a_local_stack_needs_nginx_and_redis_server_unless_a_redis_answers(
        machine: Machine, redis_url: str, missing: str, request: pytest.FixtureRequest) -> None:
    machine.env["STACK"] = "local"
    if redis_url == "answering":
        request.getfixturevalue("redis_answering")
    elif redis_url != "closed":
        machine.env["REDIS_URL"] = redis_url
    result = machine.run("up", uid=1000)
    assert result.returncode == 1 and f"  sudo apt-get install -y {missing}\n" in result.stderr
    machine.install(*missing.split())
    assert machine.run("up", uid=1000).returncode == 0


@pytest.mark.parametrize("stack", ["docker", "auto"])
def test_up_needs_nothing_when_compose_runs_the_stack(machine: Machine, stack: str) -> None:
    machine.env["STACK"] = stack
    machine.install("docker")  # `docker info` and `docker compose version` succeed
    assert machine.run("up", uid=1000).returncode == 0


def test_an_unknown_target_is_refused_and_make_can_run_it_directly(machine: Machine) -> None:
    result = machine.run("deploy", uid=0)
    assert result.returncode == 1 and "usage: deploy/system_deps.sh test|up" in result.stderr
    assert os.access(SCRIPT, os.X_OK)
