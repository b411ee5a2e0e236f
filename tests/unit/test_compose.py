"""compose.yaml, compose.gpu.yaml and the image: safe services, the caller's settings passed through, a
value set only where it differs from common.config's; checked against the Compose schema (no engine)."""
from __future__ import annotations

import configparser
import json
import os
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from common.config import VARIABLES, CelerySettings, GunicornSettings, WebSettings, WorkerSettings, value
from deploy.stack import UnsafeListenerError, command, free_port
from tests.unit.test_deploy_stack import private_redis

ROOT = Path(__file__).resolve().parents[2]
FILES = ("compose.yaml", "compose.gpu.yaml")
_INTERPOLATION = re.compile(r"\$(\$|\{(\w+)(?::-([^}]*))?\})")


def _env_of(*classes: type) -> set[str]:
    return {f.metadata["env"] for cls in classes for f in fields(cls)}


#: What each service's processes read (Flower's launcher: BIND_HOST) and the caller may set.
READS = {"web": _env_of(CelerySettings, WebSettings, GunicornSettings),
         "worker": _env_of(CelerySettings, WorkerSettings),
         "flower": _env_of(CelerySettings) | {"FLOWER_BASIC_AUTH", "BIND_HOST"}}
#: Read, yet set another way: the redis service, the image's ENV, or published host ports.
NOT_PASSED = {"CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "BIND_HOST", "WEB_PORT", "FLOWER_PORT"}
#: ``${VAR:-default}`` where a program without common.config needs the value itself.
REPEATED = {"WEB_PORT", "FLOWER_PORT", "REDIS_MAXMEMORY"}


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's ``$$``, ``${VAR}`` and ``${VAR:-default}`` (empty counts as unset); no other form."""
    assert "$" not in _INTERPOLATION.sub("", text).replace("$(", ""), f"an interpolation not followed: {text}"
    return _INTERPOLATION.sub(lambda m: "$" if m[1] == "$" else env.get(m[2]) or m[3] or "", text)


def load(name: str, env: Mapping[str, str] | None = None) -> Any:
    """``name`` as Compose reads it (no value we interpolate needs YAML quoting)."""
    return yaml.safe_load(interpolate((ROOT / name).read_text(), env or {}))


def merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{key: merge(base[key], item) if key in base else item
                           for key, item in override.items()}}
    return override


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return dict(load("compose.yaml")["services"])


def test_the_files_are_valid_compose_setting_valid_values_and_the_gpu_one_gives_the_workers_gpus() -> None:
    schema = json.loads((ROOT / "deploy" / "schema" / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    compose, gpu = load("compose.yaml"), load("compose.gpu.yaml")
    merged = merge(compose, gpu)
    for document in (compose, gpu, merged):
        assert [error.message for error in validator.iter_errors(document)] == []
    assert list(validator.iter_errors({"services": {"web": {"ports": "8000:8000"}}}))  # the schema can fail
    services = merged["services"]
    given = {k: v for service in services.values() for k, v in service.get("environment", {}).items() if v}
    assert given and all(value(k, {k: str(v)}) is not None for k, v in given.items())
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert services["worker"]["environment"]["DEVICE"] == "cuda" and devices == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_the_services_start_our_programs(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", "web", "nginx", "worker", "worker-extra", "flower"}
    assert services["worker"]["command"] == ["python", "-m", "workers"]
    assert services["worker"]["container_name"] == "ml_service"  # the seed guide's name: one container
    extra = services["worker-extra"]  # the same worker, scaled by `make up WORKERS=N`
    assert extra["deploy"] == {"replicas": 0} and "container_name" not in extra
    assert {k: v for k, v in services["worker"].items() if k != "container_name"} == {
        k: v for k, v in extra.items() if k != "deploy"}
    options = {arg.split("=")[0] for service in services.values() for arg in service.get("command", [])}
    assert not options & {"--bind", "-b", "--basic_auth", "--basic-auth", "--auth"}  # ps shows command lines


def test_flower_in_a_container_refuses_to_start_without_a_login(services: dict[str, Any]) -> None:
    env = services["flower"]["environment"]
    assert env["FLOWER_BASIC_AUTH"] is None  # passed only when set: "" would be an empty login
    given = {k: v for k, v in env.items() if v is not None}
    with pytest.raises(UnsafeListenerError, match="FLOWER_BASIC_AUTH"):
        command("flower", given)
    assert "--address=0.0.0.0" in command("flower", {**given, "FLOWER_BASIC_AUTH": "admin:secret"})


def test_services_share_redis_wait_for_health_publish_their_ports_and_stop_gracefully(
        services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
        assert name == "redis" or [d["condition"] for d in service["depends_on"].values()] == [
            "service_healthy"], name
    assert services["web"]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    given = {"WEB_PORT": "8080", "FLOWER_PORT": "5566", "REDIS_PASSWORD": "pw"}
    found = load("compose.yaml", given)["services"]
    # A public default password, the same for every service, and the caller's when set.
    assert [service["environment"]["REDIS_PASSWORD"] for service in (
        services["redis"], services["web"], found["worker"])] == ["change-me", "change-me", "pw"]
    assert (found["nginx"]["ports"], found["flower"]["ports"]) == (["8080:8000"], ["5566:5555"])
    assert "ports" not in found["web"]  # gunicorn is reached through nginx only
    assert int(services["web"]["stop_grace_period"].rstrip("s")) >= value("RESULT_TIMEOUT", {}) + 5
    assert int(services["worker"]["stop_grace_period"].rstrip("s")) > value("TASK_TIME_LIMIT", {})


@pytest.mark.parametrize("service", sorted(READS))
def test_every_setting_a_service_reads_is_passed_through(services: dict[str, Any], service: str) -> None:
    assert sorted(READS[service] - NOT_PASSED - set(services[service]["environment"])) == []


@pytest.mark.parametrize("name", FILES)
def test_compose_passes_only_variables_we_read_and_values_only_where_they_differ(name: str) -> None:
    raw = yaml.safe_load((ROOT / name).read_text())
    for service, found in raw["services"].items():
        env = {} if isinstance(found, str) else found.get("environment", {})
        assert set(env) <= set(VARIABLES), service
        assert not set(env) - READS.get(service.removesuffix("-extra"), set(env)), service
        for key, text in env.items():
            for match in _INTERPOLATION.finditer(str(text or "")):
                assert match[2] == key, f"{key} is fed from {match[2]}"  # from its own variable
    for text in re.findall(r"\$\{\w+:-[^}]*\}", (ROOT / name).read_text()):
        variable, default = text[2:-1].split(":-", 1)
        repeated = value(variable, {variable: default}) == value(variable, {})
        assert repeated is (variable in REPEATED), f"{text}: {'say nothing' if repeated else 'differs'}"


def test_the_image_keeps_every_package_and_file_it_runs() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    packages = [line.strip().rstrip("*") for line in setup["options.packages.find"]["include"].split()]
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    for path in ["celeryconfig.py", "setup.cfg", "pyproject.toml", "README.md", "deploy", *packages]:
        assert (ROOT / path).exists() and path not in ignored and f"{path}/" not in ignored, path


def test_the_redis_script_really_runs_with_any_password(services: dict[str, Any], tmp_path: Path) -> None:
    # The container's script on a local port and folder: it asks for the password, however quoted,
    # keeps an AOF (on the volume), caps memory, and no command line holds the password.
    redis = services["redis"]
    assert "--dir /data" in redis["command"][2] and redis["volumes"] == ["redis-data:/data"]
    assert redis["healthcheck"]["test"] == [
        "CMD-SHELL", 'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli ping | grep -q PONG']
    port, password = free_port(), 'pa ss"wo\\rd$'
    script = redis["command"][2].replace("--dir /data", f"--dir {tmp_path}").replace(
        "/tmp/redis.conf", str(tmp_path / "redis.conf")) + f" --port {port} --bind 127.0.0.1"
    env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD": password, "REDIS_MAXMEMORY": "64mb"}
    with private_redis(["sh", "-c", script], env, port, password, 64 * 2**20, tmp_path / "log") as server:
        assert (tmp_path / "redis.conf").stat().st_mode & 0o077 == 0
        assert password not in Path(f"/proc/{server.pid}/cmdline").read_text()
