"""compose.yaml, compose.gpu.yaml and the image: safe services, the caller's settings passed through, a
value set only where it differs from common.config's; checked against the Compose schema (no engine)."""
from __future__ import annotations

import configparser
import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jsonschema
import pytest
import redis
import yaml

from common.config import VARIABLES, CelerySettings, GunicornSettings, WebSettings, WorkerSettings, value
from deploy import redisurl
from deploy.stack import Process, UnsafeListenerError, command, free_port

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
    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: walk(item) for key, item in node.items()}
        return [walk(item) for item in node] if isinstance(node, list) else \
            interpolate(node, env or {}) if isinstance(node, str) else node
    return walk(yaml.safe_load((ROOT / name).read_text()))


def merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{key: merge(base[key], item) if key in base else item
                           for key, item in override.items()}}
    return override


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return dict(load("compose.yaml")["services"])


def test_the_files_are_valid_compose() -> None:
    schema = json.loads((ROOT / "deploy" / "schema" / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    compose, gpu = load("compose.yaml"), load("compose.gpu.yaml")
    for document in (compose, gpu, merge(compose, gpu)):
        assert [error.message for error in validator.iter_errors(document)] == []
    assert list(validator.iter_errors({"services": {"web": {"ports": "8000:8000"}}}))  # the schema can fail


def test_the_services_start_our_programs(services: dict[str, Any]) -> None:
    assert set(services) == {"redis", "web", "nginx", "worker", "worker-extra", "flower"}
    assert services["worker"]["command"] == services["worker-extra"]["command"] == ["python", "-m", "workers"]
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


def test_redis_persists_caps_memory_and_keeps_its_password_private(services: dict[str, Any]) -> None:
    redis = services["redis"]
    script = redis["command"][2]
    for option in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction",
                   '--maxmemory "$REDIS_MAXMEMORY"', "umask 077"):
        assert option in script
    assert "requirepass" not in script.split("exec ", 1)[1] and redis["volumes"] == ["redis-data:/data"]
    assert redis["healthcheck"]["test"] == [
        "CMD-SHELL", 'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli ping | grep -q PONG']
    # A public default password, the same for every service, and the caller's when set.
    found = load("compose.yaml", {"REDIS_PASSWORD": "s3cret"})["services"]
    assert [s["environment"]["REDIS_PASSWORD"] for s in (redis, services["web"], found["worker"])] == [
        "change-me", "change-me", "s3cret"]


def test_services_wait_for_health_publish_their_ports_and_stop_gracefully(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
        assert name == "redis" or [d["condition"] for d in service["depends_on"].values()] == [
            "service_healthy"], name
    assert services["web"]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    found = load("compose.yaml", {"WEB_PORT": "8080", "FLOWER_PORT": "5566"})["services"]
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


def test_values_compose_sets_are_valid_settings() -> None:
    merged = merge(load("compose.yaml"), load("compose.gpu.yaml"))["services"]
    given = {k: v for service in merged.values() for k, v in service.get("environment", {}).items() if v}
    assert given and all(value(k, {k: str(v)}) is not None for k, v in given.items())
    assert merged["worker"]["environment"]["DEVICE"] == "cuda"
    assert merged["worker"]["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_the_image_installs_every_package_and_keeps_what_it_runs(services: dict[str, Any]) -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    packages = [line.strip().rstrip("*") for line in setup["options.packages.find"]["include"].split()]
    dockerfile = (ROOT / "Dockerfile").read_text()
    (stubs,) = re.findall(r"mkdir -p ([\w ]+)", dockerfile)  # the dependency layer's empty packages
    assert sorted(stubs.split()) == sorted(packages)
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    for path in ["celeryconfig.py", "setup.cfg", "pyproject.toml", "README.md", "deploy", *packages]:
        assert (ROOT / path).exists() and path not in ignored and f"{path}/" not in ignored, path
    assert json.loads(re.findall(r"^CMD (.*)$", dockerfile, re.M)[0]) == services["web"]["command"]


def test_the_redis_script_really_runs_with_any_password(services: dict[str, Any], tmp_path: Path) -> None:
    # The container's script on a local port and folder: it asks for the password, however quoted,
    # keeps an AOF, caps memory, and no command line holds the password.
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port, password = free_port(), 'pa ss"wo\\rd$'
    script = services["redis"]["command"][2].replace("--dir /data", f"--dir {tmp_path}").replace(
        "/tmp/redis.conf", str(tmp_path / "redis.conf")) + f" --port {port} --bind 127.0.0.1"
    env = {"PATH": os.environ["PATH"], "REDIS_PASSWORD": password, "REDIS_MAXMEMORY": "64mb"}
    with Process(["sh", "-c", script], log_path=tmp_path / "log", env=env, name="redis") as server:
        assert redisurl.wait(f"redis://:{quote(password, safe='')}@127.0.0.1:{port}/0", 15), server.log()
        client = redis.Redis(port=port, password=password, socket_timeout=5)
        config = client.config_get("*")
        assert (config["appendonly"], config["maxmemory-policy"], config["maxmemory"]) == (
            "yes", "noeviction", str(64 * 2**20)), server.log()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, socket_timeout=5).ping()
        assert (tmp_path / "redis.conf").stat().st_mode & 0o077 == 0
        assert password not in Path(f"/proc/{server.pid}/cmdline").read_text()
