"""compose.yaml, compose.gpu.yaml and the Dockerfile run our services with our settings.

No Docker engine runs the tests, so the compose files are checked against the
Compose Specification's JSON schema (vendored in deploy/schema/, see its
README) after the same ${VAR:-default} interpolation Compose applies. What each
service reads comes from ``common.config``: the ``metadata["env"]`` of the
settings classes its processes load, and ``VARIABLES`` (defaults, parsers and
the README's "read by" column). No source is scanned.
"""
from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import fields
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis
import yaml

from common.config import (
    VARIABLES,
    CelerySettings,
    ConfigError,
    GunicornSettings,
    WebSettings,
    WorkerSettings,
    value,
)
from deploy.stack import UnsafeListenerError, command

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "deploy" / "schema" / "compose-spec.json"
COMPOSE_FILES = ("compose.yaml", "compose.gpu.yaml")
SERVICES = {"redis", "web", "worker", "worker-extra", "flower"}
APP_SERVICES = sorted(SERVICES - {"redis"})


def env_names(*settings: type[Any]) -> frozenset[str]:
    """The environment variables the fields of these settings classes are read from."""
    return frozenset(f.metadata["env"] for cls in settings for f in fields(cls) if "env" in f.metadata)


#: The variables each service's processes read. celeryconfig.py (CelerySettings) is
#: loaded by every Celery process; Flower reads its own FLOWER_* variables.
READS: dict[str, frozenset[str]] = {
    "web": env_names(CelerySettings, WebSettings, GunicornSettings),
    "worker": env_names(CelerySettings, WorkerSettings),
    # deploy/stack.py reads BIND_HOST for Flower's --address.
    "flower": env_names(CelerySettings) | {n for n in VARIABLES if n.startswith("FLOWER_")} | {"BIND_HOST"},
    "redis": frozenset({"REDIS_PASSWORD", "REDIS_MAXMEMORY"}),
}
READS["worker-extra"] = READS["worker"]  # the same program: more workers on the queue
#: Settings a service reads that compose.yaml sets on purpose in another way.
NOT_PASSED = {
    "CELERY_BROKER_URL": "the broker is the redis service, through REDIS_URL",
    "CELERY_RESULT_BACKEND": "the result backend is the redis service, through REDIS_URL",
    "WEB_PORT": "the container listens on WEB_PORT's default; WEB_PORT is the published host port",
    "FLOWER_PORT": "Flower listens on FLOWER_PORT's default in the container; FLOWER_PORT is the "
                   "published host port",
}
#: The README's "read by" words (VARIABLES' ``read_by``) that name each service's processes.
READ_BY = {"web": {"all", "web", "gunicorn"}, "worker": {"all", "worker"}, "worker-extra": {"all", "worker"},
           "flower": {"all", "Flower"}}
#: Documented as read by a service, but read by the local stack's launcher, not by the process.
LAUNCHER_READS = {
    ("flower", "BIND_HOST"): "deploy/stack.py passes it as --address",
}
#: ${VAR:-default} in a compose file that differs from common.config's default on purpose.
INTENDED_DEFAULTS = {("compose.gpu.yaml", "DEVICE"): "cuda",
                     # compose always sets a password (README: change it); the code has none to set
                     ("compose.yaml", "REDIS_PASSWORD"): "change-me"}
#: Command-line options whose value belongs in the environment (a bind, or credentials).
ENVIRONMENT_ONLY_OPTIONS = ("--bind", "-b", "--basic_auth", "--basic-auth", "--auth")

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_VARIABLE = re.compile(r"\$(?:(\$)|\{(" + _NAME + r")(?:(:?[-?+])([^}]*))?\}|(" + _NAME + r"))")


# --- Compose's interpolation ---------------------------------------------------------------------

def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Substitute ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR:+alt}, $VAR and $$."""

    def substitute(match: re.Match[str]) -> str:
        escaped, name, op, arg, bare = match.groups()
        if escaped:
            return "$"
        if bare:
            return env.get(bare, "")
        value = env.get(name)
        # With a colon (":-", ":?", ":+") an empty value counts as unset.
        present = None if value == "" and op and op.startswith(":") else value
        if op in {":-", "-"}:
            return present if present is not None else interpolate(arg, env)
        if op in {":?", "?"}:
            if present is None:
                raise ValueError(f"required variable {name} is missing: {arg}")
            return present
        if op in {":+", "+"}:
            return interpolate(arg, env) if present is not None else ""
        return value or ""

    return _VARIABLE.sub(substitute, text)


def _map_strings(node: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(node, str):
        return fn(node)
    if isinstance(node, list):
        return [_map_strings(item, fn) for item in node]
    if isinstance(node, dict):  # Compose interpolates values, not keys
        return {key: _map_strings(value, fn) for key, value in node.items()}
    return node


def load(name: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A compose file as Compose sees it, interpolated with ``env`` (defaults when empty)."""
    raw = yaml.safe_load((ROOT / name).read_text())
    return _map_strings(raw, lambda text: interpolate(text, env or {}))


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, for the mappings these files use."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


def environment(service: Mapping[str, Any]) -> dict[str, Any]:
    """A service's environment as a mapping (Compose accepts a list of KEY=VALUE too)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def _strings(node: Any) -> list[str]:
    """Every string value in a YAML document (what Compose interpolates; comments and keys are not)."""
    if isinstance(node, str):
        return [node]
    items = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    return [text for item in items for text in _strings(item)]


def interpolations(name: str) -> list[re.Match[str]]:
    """Every ``$...`` Compose substitutes in compose file ``name`` (``$$`` escapes left out)."""
    raw = yaml.safe_load((ROOT / name).read_text())
    return [match for text in _strings(raw) for match in _VARIABLE.finditer(text) if not match[1]]


def defaults_in(name: str) -> list[tuple[str, str]]:
    """Every ``${VAR:-default}`` (or ``${VAR-default}``) in compose file ``name``, as (VAR, default)."""
    return [(match[2], match[4]) for match in interpolations(name) if match[3] in {":-", "-"}]


def documented_for(service: str) -> set[str]:
    """The variables the README's table says ``service`` reads (VARIABLES' ``read_by``)."""
    def readers(read_by: str) -> set[str]:
        return {part.strip().split(" ")[0] for part in read_by.split(",")}
    return {v.name for v in VARIABLES.values() if readers(v.read_by) & READ_BY[service]}


def _parsed(name: str, text: str) -> Any:
    """``text`` as the code reads variable ``name`` (the text itself for script-only variables)."""
    return text if VARIABLES[name].parse is None else value(name, {name: text})


def _seconds(duration: str) -> float:
    """A Compose duration with one unit (``40s``, ``2m``) in seconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert match, f"unexpected duration {duration!r}"
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match[2]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _published(port: str) -> tuple[str, int]:
    host, container = port.rsplit(":", 1)
    return host, int(container)


# --- the Dockerfile and the build context --------------------------------------------------------

def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of each Dockerfile instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in joined.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1])
            for line in lines if line and not line.startswith("#")]


def dockerfile_env() -> dict[str, str]:
    """The image's ``ENV KEY=VALUE ...`` settings."""
    return dict(item.split("=", 1) for instruction, args in _dockerfile_instructions()
                if instruction == "ENV" for item in shlex.split(args))


def dockerfile_cmd() -> list[str]:
    """The image's default command (exec form)."""
    (cmd,) = [json.loads(args) for instruction, args in _dockerfile_instructions() if instruction == "CMD"]
    return list(cmd)


def dockerfile_stub_packages() -> list[str]:
    """The empty packages the dependency layer creates: the arguments of its ``mkdir -p``."""
    (run,) = [args for instruction, args in _dockerfile_instructions()
              if instruction == "RUN" and "mkdir -p" in args]
    words = shlex.split(run)
    start = words.index("-p") + 1
    return words[start:words.index("&&", start)]


def setup_cfg_packages() -> list[str]:
    """The packages setup.cfg installs (``[options.packages.find] include``, top level)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return [line.strip().rstrip("*") for line in config["options.packages.find"]["include"].split()]


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (or a folder above it) out of the build context."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    return any(fnmatch(prefix, pattern) or fnmatch(prefix, pattern.removeprefix("**/"))
               for pattern in patterns for prefix in prefixes)


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load("compose.yaml")


@pytest.fixture(scope="module")
def merged() -> dict[str, Any]:
    return merge(load("compose.yaml"), load("compose.gpu.yaml"))


def _errors(validator: jsonschema.Draft7Validator, document: Any) -> list[str]:
    return [f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in validator.iter_errors(document)]


# --- the files are valid Compose -----------------------------------------------------------------

@pytest.mark.parametrize("files", [
    ["compose.yaml"], ["compose.gpu.yaml"], ["compose.yaml", "compose.gpu.yaml"]],
                         ids=["compose", "gpu-override", "merged"])
def test_compose_files_match_the_compose_specification(
        validator: jsonschema.Draft7Validator, files: list[str]) -> None:
    document: Any = {}
    for name in files:
        document = merge(document, load(name))
    assert _errors(validator, document) == []


def test_the_schema_catches_a_wrong_service(validator: jsonschema.Draft7Validator) -> None:
    broken = {"services": {"web": {"image": "x", "ports": "8000:8000", "healthcheck": {"test": 1}}}}
    assert len(_errors(validator, broken)) == 2


def test_interpolation_follows_compose() -> None:
    env = {"SET": "v", "EMPTY": ""}
    text = "${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} $$HOME ${SET:+alt}"
    assert interpolate(text, env) == "v d d  $HOME alt"
    with pytest.raises(ValueError, match="UNSET"):
        interpolate("${UNSET:?needed}", env)


# --- services, commands, ports -------------------------------------------------------------------

def test_the_services_are_redis_web_workers_and_flower(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def test_commands_start_our_programs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["web"]["command"] == ["gunicorn", "-c", "webapp/gunicorn.conf.py", "webapp.wsgi:app"]
    assert services["worker"]["command"] == services["worker-extra"]["command"] == ["python", "-m", "workers"]
    assert services["flower"]["command"] == ["python", "-m", "deploy.stack", "exec", "flower"]
    assert services["redis"]["image"].startswith("redis:7")


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_no_bind_or_credentials_on_a_command_line(compose: dict[str, Any], service: str) -> None:
    # A command line is visible to every user of the host (ps); the bind and Flower's
    # login come from the environment (BIND_HOST, FLOWER_BASIC_AUTH).
    command = compose["services"][service].get("command", [])
    assert [arg for arg in command if arg.split("=", 1)[0] in ENVIRONMENT_ONLY_OPTIONS] == []


def test_gunicorn_listens_on_all_interfaces_of_its_container(compose: dict[str, Any]) -> None:
    assert environment(compose["services"]["web"])["BIND_HOST"] == "0.0.0.0"


def test_the_worker_container_is_ml_service_as_in_the_seed_guide(compose: dict[str, Any]) -> None:
    assert compose["services"]["worker"]["container_name"] == "ml_service"
    assert "deploy" not in compose["services"]["worker"]  # one container, whatever WORKERS says


def test_more_workers_are_worker_extra_replicas_none_by_default(compose: dict[str, Any]) -> None:
    # A fixed container_name forbids --scale; the extra workers are the same service without it,
    # scaled by `make up WORKERS=N` (deploy/up.sh: --scale worker-extra=N-1) or by hand.
    worker, extra = compose["services"]["worker"], compose["services"]["worker-extra"]
    assert "container_name" not in extra
    assert extra["deploy"] == {"replicas": 0}
    assert {k: v for k, v in worker.items() if k != "container_name"} == {
        k: v for k, v in extra.items() if k != "deploy"}
    up = (ROOT / "deploy" / "up.sh").read_text()
    assert '--scale "worker-extra=$((default_count - 1))"' in up


@pytest.mark.parametrize(("env", "web", "flower"), [({}, "8000:8000", "5555:5555"),
                                                     ({"WEB_PORT": "8080", "FLOWER_PORT": "5566"},
                                                      "8080:8000", "5566:5555")])
def test_published_ports_follow_web_port_and_flower_port(env: dict[str, str], web: str, flower: str) -> None:
    services = load("compose.yaml", env)["services"]
    assert services["web"]["ports"] == [web]
    assert services["flower"]["ports"] == [flower]


def test_the_web_container_port_is_where_gunicorn_listens(compose: dict[str, Any]) -> None:
    # WEB_PORT is not passed, so gunicorn binds its default inside the container.
    web = compose["services"]["web"]
    (port,) = web["ports"]
    _, container = _published(port)
    assert container == _parsed("WEB_PORT", VARIABLES["WEB_PORT"].default)
    assert f"http://127.0.0.1:{container}/healthz" in " ".join(web["healthcheck"]["test"])


def test_the_flower_container_port_is_where_flower_listens(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    (port,) = flower["ports"]
    _, container = _published(port)
    # deploy/stack.py gives Flower FLOWER_PORT's default and the container's BIND_HOST.
    default_port = int(VARIABLES["FLOWER_PORT"].default)
    assert (container, flower["environment"]["BIND_HOST"]) == (default_port, "0.0.0.0")
    assert f"http://127.0.0.1:{container}/healthcheck" in " ".join(flower["healthcheck"]["test"])


def test_flower_in_a_container_refuses_to_start_without_a_login(compose: dict[str, Any]) -> None:
    env = {k: str(v) for k, v in compose["services"]["flower"]["environment"].items() if v is not None}
    with pytest.raises(UnsafeListenerError, match="FLOWER_BASIC_AUTH"):
        command("flower", env)
    assert "--address=0.0.0.0" in command("flower", {**env, "FLOWER_BASIC_AUTH": "admin:secret"})


def test_redis_has_a_healthcheck_that_authenticates(compose: dict[str, Any]) -> None:
    assert compose["services"]["redis"]["healthcheck"]["test"] == [
        "CMD-SHELL", 'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli ping | grep -q PONG']


def _redis_script(compose: dict[str, Any]) -> str:
    command = compose["services"]["redis"]["command"]
    assert command[:2] == ["sh", "-c"]
    return str(command[2])


def test_redis_persists_and_caps_memory_with_a_password_off_the_command_line(compose: dict[str, Any]) -> None:
    redis_service = compose["services"]["redis"]
    script = _redis_script(compose)
    for option in ("--appendonly yes", "--appendfsync everysec", "--dir /data",
                   "--maxmemory-policy noeviction", '--maxmemory "$REDIS_MAXMEMORY"'):
        assert option in script
    assert redis_service["volumes"] == ["redis-data:/data"] and "redis-data" in compose["volumes"]
    # Only the shell's own printf sees the password; redis-server's argv names a file.
    assert "requirepass" not in script.split("exec ", 1)[1] and "umask 077" in script
    env = environment(redis_service)
    assert env["REDIS_PASSWORD"] == environment(compose["services"]["web"])["REDIS_PASSWORD"] == "change-me"
    assert load("compose.yaml", {"REDIS_PASSWORD": "s3cret"})["services"]["worker"]["environment"][
        "REDIS_PASSWORD"] == "s3cret"


def test_the_compose_redis_command_really_runs(compose: dict[str, Any], tmp_path: Path) -> None:
    # The container's script with a local port and folder: it requires the password,
    # keeps an AOF and caps memory, and no process's command line holds the password.
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    script = _redis_script(compose).replace("$$", "$").replace("--dir /data", f"--dir {tmp_path}")
    script = script.replace("/tmp/redis.conf", str(tmp_path / "redis.conf"))
    script += f" --port {port} --bind 127.0.0.1"
    password = 'pa ss"wo\\rd$'

    proc = subprocess.Popen(["sh", "-c", script], env={"PATH": os.environ["PATH"], "REDIS_PASSWORD": password,
                                                       "REDIS_MAXMEMORY": "64mb"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        client = redis.Redis("127.0.0.1", port, password=password, socket_timeout=5)
        deadline = time.monotonic() + 15
        while True:
            try:
                assert client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    proc.kill()
                    raise AssertionError(proc.communicate()[0].decode(errors="replace")) from None
                time.sleep(0.05)  # polling the server until it listens
        with pytest.raises(redis.AuthenticationError):
            redis.Redis("127.0.0.1", port, socket_timeout=5).ping()
        config = client.config_get("*")
        assert (config["appendonly"], config["appendfsync"], config["maxmemory-policy"]) == (
            "yes", "everysec", "noeviction")
        assert config["maxmemory"] == str(64 * 1024 * 1024)
        assert (tmp_path / "redis.conf").stat().st_mode & 0o077 == 0
        assert password not in Path(f"/proc/{proc.pid}/cmdline").read_text()
        client.close()
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("service", APP_SERVICES)
def test_app_services_wait_for_a_healthy_redis_and_have_healthchecks(
        compose: dict[str, Any], service: str) -> None:
    found = compose["services"][service]
    assert found["healthcheck"]["test"]
    assert found["depends_on"] == {"redis": {"condition": "service_healthy"}}
    assert environment(found)["REDIS_URL"] == "redis://redis:6379/0"


def test_stop_grace_periods_cover_the_longest_request_and_task(compose: dict[str, Any]) -> None:
    services = compose["services"]
    # gunicorn's graceful_timeout is RESULT_TIMEOUT + 5 s; the worker finishes a task within TASK_TIME_LIMIT.
    assert _seconds(services["web"]["stop_grace_period"]) >= _parsed(
        "RESULT_TIMEOUT", VARIABLES["RESULT_TIMEOUT"].default) + 5
    assert _seconds(services["worker"]["stop_grace_period"]) > _parsed(
        "TASK_TIME_LIMIT", VARIABLES["TASK_TIME_LIMIT"].default)


# --- what each service reads, what compose passes ------------------------------------------------

def test_the_settings_classes_name_the_variables() -> None:
    assert READS["web"] > env_names(GunicornSettings) | {"MAX_UPLOAD_MB", "REDIS_URL"}
    assert READS["worker"] > {"MODEL", "BATCH_SIZE", "REDIS_URL"}
    assert READS["flower"] > {"FLOWER_BASIC_AUTH", "REDIS_URL"}
    assert frozenset[str]().union(*READS.values()) <= set(VARIABLES)


@pytest.mark.parametrize("service", APP_SERVICES)
def test_every_setting_the_service_reads_is_passed_through(compose: dict[str, Any], service: str) -> None:
    missing = READS[service] - set(NOT_PASSED) - set(environment(compose["services"][service]))
    assert sorted(missing) == []


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_variable_passed_is_read_by_the_service(compose: dict[str, Any], service: str) -> None:
    assert sorted(set(environment(compose["services"][service])) - READS[service]) == []


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_settings_set_another_way_are_not_passed(merged: dict[str, Any], service: str) -> None:
    assert sorted(set(environment(merged["services"][service])) & set(NOT_PASSED)) == []


def test_every_exception_names_a_variable_a_service_reads() -> None:
    assert set(NOT_PASSED) <= frozenset[str]().union(*READS.values())
    assert {name for _, name in LAUNCHER_READS} <= set(VARIABLES)


@pytest.mark.parametrize("service", sorted(READ_BY))
def test_documented_settings_are_read_by_the_service(service: str) -> None:
    documented = documented_for(service)
    launcher = {name for (owner, name) in LAUNCHER_READS if owner == service}
    assert documented > {"REDIS_URL"}
    assert sorted(documented - launcher - READS[service]) == []


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_interpolates_only_declared_variables(name: str) -> None:
    used = {match[2] or match[5] for match in interpolations(name)}
    assert used
    assert sorted(used - set(VARIABLES)) == []


def test_defaults_in_compose_are_the_code_defaults() -> None:
    found = [(name, variable, default) for name in COMPOSE_FILES for variable, default in defaults_in(name)]
    assert len(found) >= 8, f"found too few ${{VAR:-default}}: {found}"
    wrong = [(name, variable, default) for name, variable, default in found
             if _parsed(variable, default) != _parsed(
                 variable, INTENDED_DEFAULTS.get((name, variable), VARIABLES[variable].default))]
    assert wrong == []


def test_intended_defaults_are_used() -> None:
    found = {(name, variable) for name in COMPOSE_FILES for variable, _ in defaults_in(name)}
    assert set(INTENDED_DEFAULTS) <= found


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_an_environment_entry_is_fed_from_its_own_variable(name: str) -> None:
    raw = yaml.safe_load((ROOT / name).read_text())
    fed = [(key, interpolated[2]) for service in raw["services"].values()
           for key, text in environment(service).items()
           for interpolated in _VARIABLE.finditer(str(text or "")) if interpolated[2]]
    assert fed
    assert [(key, source) for key, source in fed if key != source] == []


@pytest.mark.parametrize("gpu", [False, True], ids=["compose", "merged"])
@pytest.mark.parametrize("service", APP_SERVICES)
def test_values_compose_sets_are_valid_settings(
        compose: dict[str, Any], merged: dict[str, Any], service: str, gpu: bool) -> None:
    # Entries with no value are passed only when set: the code's default applies otherwise.
    document = merged if gpu else compose
    given = {name: str(text) for name, text in environment(document["services"][service]).items()
             if text is not None}
    assert given
    invalid = []
    for name, text in sorted(given.items()):
        try:
            _parsed(name, text)
        except ConfigError as exc:
            invalid.append(str(exc))
    assert invalid == []


def test_batch_mode_reaches_both_web_and_worker() -> None:
    for env, expected in (({}, "false"), ({"USE_BATCH_PROCESSING": "true"}, "true")):
        services = load("compose.yaml", env)["services"]
        assert environment(services["web"])["USE_BATCH_PROCESSING"] == expected
        assert environment(services["worker"])["USE_BATCH_PROCESSING"] == expected


def test_flower_login_is_passed_only_when_set(compose: dict[str, Any]) -> None:
    # An empty FLOWER_BASIC_AUTH would make Flower accept the user "" with password "".
    assert environment(compose["services"]["flower"])["FLOWER_BASIC_AUTH"] is None


def test_gpu_override_reserves_nvidia_gpus_for_the_worker_and_selects_cuda(merged: dict[str, Any]) -> None:
    worker = merged["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert environment(worker)["DEVICE"] == "cuda"
    assert environment(worker)["MODEL_JIT"] == "true"  # the override keeps the rest
    assert "deploy" not in merged["services"]["web"]


# --- the image -----------------------------------------------------------------------------------

def test_the_image_starts_the_web_app_as_compose_does(compose: dict[str, Any]) -> None:
    assert dockerfile_cmd() == compose["services"]["web"]["command"]


def test_the_image_binds_all_interfaces_through_the_environment() -> None:
    env = dockerfile_env()
    assert env["BIND_HOST"] == "0.0.0.0"
    # Beyond Python's and pip's own, the image sets only what its default command (the web app) reads.
    ours = {name for name in env if not name.startswith(("PYTHON", "PIP_"))}
    assert sorted(ours - READS["web"]) == []


def test_the_dependency_layer_stubs_every_installed_package() -> None:
    assert sorted(dockerfile_stub_packages()) == sorted(setup_cfg_packages())


@pytest.mark.parametrize("path", ["celeryconfig.py", "setup.cfg", "pyproject.toml", "README.md",
                                  "webapp/gunicorn.conf.py", *setup_cfg_packages()])
def test_the_build_context_keeps_what_the_image_runs(path: str) -> None:
    assert (ROOT / path).exists()
    assert not dockerignored(path)


def test_the_dockerignore_check_sees_what_is_left_out() -> None:
    assert dockerignored("tests/unit") and dockerignored("webapp/__pycache__/x.pyc")
