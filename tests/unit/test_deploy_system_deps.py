"""deploy/system_deps.sh: what `make test` and `make up` install, or the command it prints.

The script runs with a PATH (and sbin) of fakes only: `id` says which user we are, `apt-get` and
`rabbitmq-server` log their arguments (bin/NAME.log), `apt-get` "installs" a program by creating it;
the other programs exist only when a test creates them.
"""
from __future__ import annotations

import os
import shutil
import socketserver
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from deploy.stack import free_port
from tests.unit.test_deploy_stack import serving

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "system_deps.sh"
BASH = shutil.which("bash") or "/bin/bash"

#: rabbitmq-diagnostics answers once rabbitmq-server was started.
_FAKES = {"id": '#!/bin/sh\necho "$FAKE_UID"\n',
          "apt-get": """#!/bin/sh
echo "DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*" >>"$FAKE_BIN/apt-get.log"
[ "$1" = install ] || exit 0
for arg; do
    case $arg in
        -* | install) ;;
        *) printf '#!/bin/sh\\n' >"$FAKE_BIN/$arg"; /bin/chmod +x "$FAKE_BIN/$arg" ;;
    esac
done
""",
          "rabbitmq-server": '#!/bin/sh\necho "$*" >>"$FAKE_BIN/rabbitmq-server.log"\n',
          "rabbitmq-diagnostics": '#!/bin/sh\n[ -e "$FAKE_BIN/rabbitmq-server.log" ]\n',
          "sleep": "#!/bin/sh\n"}
RABBITMQ = ("rabbitmq-server", "rabbitmq-diagnostics", "sleep")


class Machine:
    """A PATH of fakes and an sbin, and the script run against them."""

    def __init__(self, root: Path) -> None:
        self.bin, self.sbin = root / "bin", root / "sbin"
        self.bin.mkdir()
        self.sbin.mkdir()
        (self.bin / "dirname").symlink_to(shutil.which("dirname") or "/usr/bin/dirname")
        self.env = {"PATH": str(self.bin), "SBIN_PATH": str(self.sbin), "FAKE_BIN": str(self.bin),
                    "VENV_BIN": str(Path(sys.executable).parent),  # common.sh's py(), for deploy.redisurl
                    "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                    "TEST_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}//",
                    "RABBITMQ_START_TIMEOUT": "10"}
        self.install("id", "apt-get")

    def install(self, *programs: str, body: str | None = None, where: Path | None = None) -> None:
        for program in programs:
            path = (where or self.bin) / program
            path.write_text(body if body is not None else _FAKES.get(program, "#!/bin/sh\n"))
            path.chmod(0o755)

    def run(self, target: str, uid: int = 1000) -> subprocess.CompletedProcess[str]:
        return subprocess.run([BASH, str(SCRIPT), target], env={**self.env, "FAKE_UID": str(uid)},
                              capture_output=True, text=True, timeout=30, check=False)

    def log(self, fake: str) -> list[str]:
        path = self.bin / f"{fake}.log"
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


#: What a running server says first, and its URL: RabbitMQ starts the AMQP handshake, Redis answers PING.
_SERVERS = {"TEST_AMQP_URL": (b"\x01\x00\x00", "amqp://guest:guest@127.0.0.1:{}//"),
            "REDIS_URL": (b"+PONG\r\n", "redis://127.0.0.1:{}/0")}


@pytest.fixture
def answering(machine: Machine) -> Iterator[Callable[[str], None]]:
    """``answering(variable)``: that URL now reaches something that answers as the running server does."""
    with ExitStack() as servers:
        def answer(variable: str) -> None:
            reply, url = _SERVERS[variable]

            class Handler(socketserver.BaseRequestHandler):
                def handle(self) -> None:
                    self.request.recv(64)
                    self.request.sendall(reply)

            server = servers.enter_context(serving(socketserver.TCPServer(("127.0.0.1", 0), Handler)))
            machine.env[variable] = url.format(server.server_address[1])
        yield answer


@pytest.mark.parametrize(("installed", "answers", "missing"), [
    (("chromium", "nginx", "redis-server"), ("TEST_AMQP_URL",), ""),
    (("chromium", "nginx"), ("TEST_AMQP_URL", "REDIS_URL"), ""),  # a Redis that answers: no redis-server
    ((), (), "chromium nginx redis-server rabbitmq-server"),
    (("redis-server", "rabbitmq-server", "rabbitmq-diagnostics", "sbin/nginx"), (), "chromium"),
])
def test_nothing_to_do_when_everything_is_installed_or_answers_else_not_root_stops_naming_what_is_missing(
        machine: Machine, answering: Callable[[str], None], installed: tuple[str, ...],
        answers: tuple[str, ...], missing: str) -> None:
    for program in installed:  # sbin/: Debian's place for nginx, off a user's PATH
        machine.install(Path(program).name, where=machine.sbin if "/" in program else None)
    for variable in answers:
        answering(variable)
    result = machine.run("test", uid=1000)
    if missing:
        assert result.returncode == 1 and f"  sudo apt-get install -y {missing}\n" in result.stderr
    else:
        assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert machine.log("apt-get") == [] and machine.log("rabbitmq-server") == []


def test_root_installs_what_is_missing_without_questions_or_recommends(machine: Machine) -> None:
    machine.install("redis-server", *RABBITMQ)
    machine.install("apt-get", body="#!/bin/sh\nexit 100\n")
    assert machine.run("test", uid=0).returncode == 100  # apt-get's failure is the script's
    machine.install("apt-get")
    result = machine.run("test", uid=0)
    assert result.returncode == 0, result.stderr
    assert machine.log("apt-get") == [
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
    machine.install("chromium", "nginx", "redis-server", *RABBITMQ)
    for name, body in fakes.items():
        machine.install(name, body=body)
    machine.env.update(env)
    result = machine.run("test", uid=uid)
    assert (result.returncode, machine.log("rabbitmq-server")) == (returncode, starts), result.stderr
    assert says in result.stdout + result.stderr


@pytest.mark.parametrize(("stack", "redis_url", "missing"), [
    ("local", "closed", "nginx redis-server"),
    ("local", "answering", "nginx"),
    ("local", "redis://192.0.2.1:6379/0", "nginx"),  # a remote one is up.sh's to refuse
    # Compose runs the stack: `docker info` and `docker compose version` succeed.
    ("docker", "closed", ""), ("auto", "closed", "")])
def test_a_local_stack_needs_nginx_and_redis_server_unless_a_redis_answers_and_compose_nothing(
        machine: Machine, answering: Callable[[str], None], stack: str, redis_url: str, missing: str) -> None:
    machine.env["STACK"] = stack
    machine.install(*() if stack == "local" else ("docker",))
    if redis_url == "answering":
        answering("REDIS_URL")
    elif redis_url != "closed":
        machine.env["REDIS_URL"] = redis_url
    if missing:
        result = machine.run("up", uid=1000)
        assert result.returncode == 1 and f"  sudo apt-get install -y {missing}\n" in result.stderr
        machine.install(*missing.split())
    assert machine.run("up", uid=1000).returncode == 0


def test_an_unknown_target_is_refused_and_make_can_run_it_directly(machine: Machine) -> None:
    result = machine.run("deploy", uid=0)
    assert result.returncode == 1 and "usage: deploy/system_deps.sh test|up" in result.stderr
    assert os.access(SCRIPT, os.X_OK)
