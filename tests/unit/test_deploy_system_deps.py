"""deploy/system_deps.sh: what `make test` and `make up` install, or the command it prints.

The script runs as it does under make, with a PATH that holds only fakes: `id`
says which user we are, `apt-get` records its arguments and "installs" a
program by creating it, and `chromium`/`redis-server`/`rabbitmq-server`/`docker`
exist only when a test creates them. A fake `rabbitmq-server` records how it was
started; a fake `rabbitmq-diagnostics` answers once it was.
"""
from __future__ import annotations

import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "system_deps.sh"
BASH = shutil.which("bash") or "/bin/bash"

_FAKE_ID = '#!/bin/sh\necho "$FAKE_UID"\n'
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


def _closed_port() -> int:
    """A port nobody listens on: no Redis answers there."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Machine:
    """A PATH of fakes, and the script run against it."""

    bin: Path
    apt_log: Path
    env: dict[str, str]

    def install(self, program: str, body: str = "#!/bin/sh\n") -> None:
        path = self.bin / program
        path.write_text(body)
        path.chmod(0o755)

    def run(self, target: str, uid: int = 1000) -> subprocess.CompletedProcess[str]:
        env = {**self.env, "FAKE_UID": str(uid)}
        return subprocess.run([BASH, str(SCRIPT), target], env=env, capture_output=True, text=True,
                              timeout=30, check=False)

    def apt_calls(self) -> list[str]:
        return self.apt_log.read_text().splitlines() if self.apt_log.exists() else []


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "dirname").symlink_to(shutil.which("dirname") or "/usr/bin/dirname")
    found = Machine(fake_bin, tmp_path / "apt.log", {
        "PATH": str(fake_bin),
        "FAKE_BIN": str(fake_bin),
        "APT_LOG": str(tmp_path / "apt.log"),
        # deploy/common.sh's py(): this interpreter, for deploy.redisurl
        "VENV_BIN": str(Path(sys.executable).parent),
        "REDIS_URL": f"redis://127.0.0.1:{_closed_port()}/0",
        "TEST_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{_closed_port()}//",
        "RABBITMQ_START_TIMEOUT": "10",
    })
    found.install("id", _FAKE_ID)
    found.install("apt-get", _FAKE_APT_GET)
    return found


class _Pong(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(64)
        self.request.sendall(b"+PONG\r\n")


_FAKE_RABBITMQ_SERVER = '#!/bin/sh\necho "$*" >>"$FAKE_BIN/rabbitmq.log"\n'
_FAKE_RABBITMQ_DIAGNOSTICS = '#!/bin/sh\n[ -e "$FAKE_BIN/rabbitmq.log" ]\n'


def install_rabbitmq(machine: Machine) -> None:
    machine.install("rabbitmq-server", _FAKE_RABBITMQ_SERVER)
    machine.install("rabbitmq-diagnostics", _FAKE_RABBITMQ_DIAGNOSTICS)
    machine.install("sleep", "#!/bin/sh\n")


def rabbitmq_starts(machine: Machine) -> list[str]:
    log = machine.bin / "rabbitmq.log"
    return log.read_text().splitlines() if log.exists() else []


class _AmqpStart(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.recv(8)
        self.request.sendall(b"\x01\x00\x00")  # the start of a connection.start method frame


@pytest.fixture
def amqp_answering(machine: Machine) -> Iterator[str]:
    """TEST_AMQP_URL where something starts the AMQP handshake, as a running RabbitMQ does."""
    with socketserver.TCPServer(("127.0.0.1", 0), _AmqpStart) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        machine.env["TEST_AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{server.server_address[1]}//"
        yield machine.env["TEST_AMQP_URL"]
        server.shutdown()
        thread.join()


@pytest.fixture
def redis_answering() -> Iterator[str]:
    """A URL where something answers PING with PONG, as a running Redis does."""
    with socketserver.TCPServer(("127.0.0.1", 0), _Pong) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"redis://127.0.0.1:{server.server_address[1]}/0"
        server.shutdown()
        thread.join()


def test_nothing_to_do_when_everything_is_installed_and_rabbitmq_answers(
        machine: Machine, amqp_answering: str) -> None:
    machine.install("chromium")
    machine.install("redis-server")
    install_rabbitmq(machine)
    result = machine.run("test")
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")
    assert machine.apt_calls() == [] and rabbitmq_starts(machine) == []


def test_not_root_stops_at_once_with_the_command_to_run(machine: Machine) -> None:
    result = machine.run("test", uid=1000)
    assert result.returncode == 1
    assert "  sudo apt-get install -y chromium redis-server rabbitmq-server\n" in result.stderr
    assert machine.apt_calls() == []


def test_the_command_names_only_what_is_missing(machine: Machine) -> None:
    machine.install("redis-server")
    install_rabbitmq(machine)
    result = machine.run("test", uid=1000)
    assert result.returncode == 1
    assert "  sudo apt-get install -y chromium\n" in result.stderr


def test_root_installs_what_is_missing_without_questions_or_recommends(machine: Machine) -> None:
    machine.install("redis-server")
    install_rabbitmq(machine)
    result = machine.run("test", uid=0)
    assert result.returncode == 0, result.stderr
    assert machine.apt_calls() == [
        "DEBIAN_FRONTEND=noninteractive update -qq",
        "DEBIAN_FRONTEND=noninteractive install -y -qq --no-install-recommends chromium",
    ]
    assert (machine.bin / "chromium").exists()


def test_root_starts_rabbitmq_when_it_does_not_answer(machine: Machine) -> None:
    for program in ("chromium", "redis-server"):
        machine.install(program)
    install_rabbitmq(machine)
    result = machine.run("test", uid=0)
    assert result.returncode == 0, result.stderr
    assert rabbitmq_starts(machine) == ["-detached"]
    assert "RabbitMQ answers" in result.stdout


def test_not_root_stops_with_the_command_that_starts_rabbitmq(machine: Machine) -> None:
    for program in ("chromium", "redis-server"):
        machine.install(program)
    install_rabbitmq(machine)
    result = machine.run("test", uid=1000)
    assert result.returncode == 1
    assert result.stderr.endswith("  sudo rabbitmq-server -detached\n")
    assert rabbitmq_starts(machine) == []


def test_a_rabbitmq_that_never_answers_stops_the_run(machine: Machine) -> None:
    for program in ("chromium", "redis-server"):
        machine.install(program)
    install_rabbitmq(machine)
    machine.install("rabbitmq-diagnostics", "#!/bin/sh\nexit 69\n")
    result = machine.run("test", uid=0)
    assert result.returncode == 1
    assert "did not answer rabbitmq-diagnostics ping within 10s" in result.stderr


def test_a_remote_rabbitmq_that_does_not_answer_is_left_to_the_tests(machine: Machine) -> None:
    for program in ("chromium", "redis-server"):
        machine.install(program)
    install_rabbitmq(machine)
    machine.env["TEST_AMQP_URL"] = "amqp://guest:guest@192.0.2.1:5672//"
    result = machine.run("test", uid=0)
    assert result.returncode == 0, result.stderr
    assert "the RabbitMQ tests will be skipped" in result.stdout and rabbitmq_starts(machine) == []


def test_root_fails_when_apt_get_does(machine: Machine) -> None:
    machine.install("apt-get", "#!/bin/sh\nexit 100\n")
    result = machine.run("test", uid=0)
    assert result.returncode == 100


def test_a_redis_that_answers_makes_redis_server_unneeded(
        machine: Machine, redis_answering: str, amqp_answering: str) -> None:
    machine.env["REDIS_URL"] = redis_answering
    machine.install("chromium")
    assert machine.run("test", uid=1000).returncode == 0


def test_up_needs_redis_server_for_a_local_stack_without_redis(machine: Machine) -> None:
    machine.env["STACK"] = "local"
    result = machine.run("up", uid=1000)
    assert result.returncode == 1
    assert "  sudo apt-get install -y redis-server\n" in result.stderr


@pytest.mark.parametrize("stack", ["docker", "auto"])
def test_up_needs_nothing_when_compose_runs_the_stack(machine: Machine, stack: str) -> None:
    machine.env["STACK"] = stack
    machine.install("docker")  # `docker info` and `docker compose version` succeed
    assert machine.run("up", uid=1000).returncode == 0


def test_up_leaves_a_remote_redis_url_to_up_sh(machine: Machine) -> None:
    machine.env |= {"STACK": "local", "REDIS_URL": "redis://192.0.2.1:6379/0"}
    assert machine.run("up", uid=1000).returncode == 0


def test_an_unknown_target_is_refused(machine: Machine) -> None:
    result = machine.run("deploy", uid=0)
    assert result.returncode == 1
    assert "usage: deploy/system_deps.sh test|up" in result.stderr


def test_make_can_run_it_directly() -> None:
    assert os.access(SCRIPT, os.X_OK)
