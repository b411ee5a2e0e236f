"""compose.yaml and compose.gpu.yaml: valid Compose files that run our services with our settings.

No Docker engine runs the tests, so the files are checked against the Compose
Specification's JSON schema (vendored in deploy/schema/, see its README) after
the same ${VAR:-default} interpolation Compose applies, and the environment
variables the code reads are compared with what each service passes through.
"""
from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "deploy" / "schema" / "compose-spec.json"
SERVICES = {"redis", "web", "worker", "flower"}

#: Where each service's settings are read. celeryconfig.py is loaded by every Celery process.
SERVICE_CODE = {
    "web": ["webapp", "celeryconfig.py"],
    "worker": ["workers", "celeryconfig.py"],
    "flower": ["celeryconfig.py"],
}
#: Settings the code reads that compose.yaml sets on purpose in another way.
NOT_PASSED = {
    "CELERY_BROKER_URL": "the broker is the redis service, through REDIS_URL",
    "CELERY_RESULT_BACKEND": "the result backend is the redis service, through REDIS_URL",
    "WEB_PORT": "the container listens on 8000; WEB_PORT is the published host port",
}
#: The settings README.md documents per service: each must really be read by that code.
DOCUMENTED = {
    "worker": ["MODEL", "MODEL_WEIGHTS", "DEVICE", "USE_BATCH_PROCESSING", "BATCH_SIZE", "BATCH_TIMEOUT",
               "BATCH_POLICY", "WORKER_CONCURRENCY", "TORCH_THREADS", "WORKER_METRICS_PORT", "REDIS_URL",
               "CELERY_QUEUE", "BROKER_VISIBILITY_TIMEOUT", "RESULT_EXPIRES", "TASK_SOFT_TIME_LIMIT",
               "TASK_TIME_LIMIT", "WORKER_PREFETCH_MULTIPLIER"],
    "web": ["USE_BATCH_PROCESSING", "MAX_UPLOAD_MB", "MAX_IMAGE_PIXELS", "RESULT_TIMEOUT", "DEFAULT_TOP_K",
            "REDIS_URL"],
}

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_VARIABLE = re.compile(r"\$(?:(\$)|\{(" + _NAME + r")(?:(:?[-?+])([^}]*))?\}|(" + _NAME + r"))")
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9_]+$")


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


# --- which environment variables the code reads ----------------------------------------------------

def _python_files(paths: Iterable[str]) -> Iterable[Path]:
    for path in paths:
        target = ROOT / path
        yield from sorted(target.rglob("*.py")) if target.is_dir() else [target]


def _reads_environ(node: ast.expr) -> bool:
    return ast.unparse(node).split(".")[-1] == "environ"


def env_names_read(paths: Iterable[str]) -> set[str]:
    """Names in os.environ.get/[]/getenv calls, and the upper-case keys of settings tables.

    A settings table is a dict literal keyed only by UPPER_CASE strings in a
    settings module (``workers.settings.DEFAULTS``, ``webapp.settings._PARSERS``).
    """
    names: set[str] = set()
    for file in _python_files(paths):
        tree = ast.parse(file.read_text(), filename=str(file))
        for node in ast.walk(tree):
            key: ast.expr | None = None
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                if isinstance(func, ast.Attribute) and func.attr in {"get", "pop", "setdefault"} \
                        and _reads_environ(func.value):
                    key = node.args[0]
                elif ast.unparse(func).split(".")[-1] == "getenv":
                    key = node.args[0]
            elif isinstance(node, ast.Subscript) and _reads_environ(node.value):
                key = node.slice
            elif isinstance(node, ast.Dict) and file.stem in {"settings", "celeryconfig"}:
                keys = [k.value for k in node.keys
                        if isinstance(k, ast.Constant) and isinstance(k.value, str)]
                if len(keys) >= 2 and len(keys) == len(node.keys) and all(map(_ENV_NAME.match, keys)):
                    names.update(keys)
            if isinstance(key, ast.Constant) and isinstance(key.value, str) and _ENV_NAME.match(key.value):
                names.add(key.value)
    return names


def _settings_defaults() -> dict[str, str]:
    """``workers.settings.DEFAULTS``, read from the source (no import: it is a literal)."""
    tree = ast.parse((ROOT / "workers" / "settings.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name, value = node.target.id, node.value
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
        else:
            continue
        if name == "DEFAULTS" and value is not None:
            return dict(ast.literal_eval(value))
    raise AssertionError("workers/settings.py has no DEFAULTS table")


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load("compose.yaml")


def _errors(validator: jsonschema.Draft7Validator, document: Any) -> list[str]:
    return [f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
            for error in validator.iter_errors(document)]


# --- tests ---------------------------------------------------------------------------------------

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


def test_the_services_are_redis_web_worker_and_flower(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES


def test_commands_start_our_programs(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["web"]["command"][0] == "gunicorn" and services["web"]["command"][-1] == "webapp.wsgi:app"
    assert "0.0.0.0:8000" in services["web"]["command"]
    assert services["worker"]["command"] == ["python", "-m", "workers"]
    assert services["flower"]["command"][:4] == ["celery", "-A", "workers", "flower"]
    assert services["redis"]["image"].startswith("redis:7")


def test_the_worker_container_is_ml_service_as_in_the_seed_guide(compose: dict[str, Any]) -> None:
    assert compose["services"]["worker"]["container_name"] == "ml_service"


@pytest.mark.parametrize(("env", "web", "flower"), [({}, "8000:8000", "5555:5555"),
                                                     ({"WEB_PORT": "8080", "FLOWER_PORT": "5566"},
                                                      "8080:8000", "5566:5555")])
def test_published_ports_follow_web_port_and_flower_port(env: dict[str, str], web: str, flower: str) -> None:
    services = load("compose.yaml", env)["services"]
    assert services["web"]["ports"] == [web]
    assert services["flower"]["ports"] == [flower]


def test_app_services_wait_for_a_healthy_redis_and_have_healthchecks(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service["healthcheck"]["test"], name
        if name != "redis":
            assert service["depends_on"] == {"redis": {"condition": "service_healthy"}}, name
            assert environment(service)["REDIS_URL"] == "redis://redis:6379/0", name


@pytest.mark.parametrize("service", sorted(SERVICE_CODE))
def test_every_setting_the_code_reads_is_passed_through(compose: dict[str, Any], service: str) -> None:
    read = env_names_read(SERVICE_CODE[service]) - set(NOT_PASSED)
    assert read, f"found no settings in {SERVICE_CODE[service]}: the scan is broken"
    assert sorted(read - set(environment(compose["services"][service]))) == []


@pytest.mark.parametrize("service", sorted(DOCUMENTED))
def test_documented_settings_are_read_by_the_code(service: str) -> None:
    assert sorted(set(DOCUMENTED[service]) - env_names_read(SERVICE_CODE[service])) == []


def test_worker_defaults_in_compose_are_the_code_defaults() -> None:
    raw = environment(yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["worker"])
    defaults = _settings_defaults()
    checked = 0
    for name, value in raw.items():
        match = re.fullmatch(r"\$\{(\w+):-(.*)\}", str(value))
        if match and name in defaults:
            assert match.group(1) == name
            expected = defaults[name]
            assert match.group(2) == expected or float(match.group(2)) == float(expected), name
            checked += 1
    assert checked >= 5


def test_batch_mode_reaches_both_web_and_worker() -> None:
    for env, expected in (({}, "false"), ({"USE_BATCH_PROCESSING": "true"}, "true")):
        services = load("compose.yaml", env)["services"]
        assert environment(services["web"])["USE_BATCH_PROCESSING"] == expected
        assert environment(services["worker"])["USE_BATCH_PROCESSING"] == expected


def test_flower_login_is_passed_only_when_set(compose: dict[str, Any]) -> None:
    # An empty FLOWER_BASIC_AUTH would make Flower accept the user "" with password "".
    assert environment(compose["services"]["flower"])["FLOWER_BASIC_AUTH"] is None


def test_gpu_override_reserves_nvidia_gpus_for_the_worker_and_selects_cuda() -> None:
    merged = merge(load("compose.yaml"), load("compose.gpu.yaml"))
    worker = merged["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert environment(worker)["DEVICE"] == "cuda"
    assert environment(worker)["MODEL"] == "efficientnet_lite0"  # the override keeps the rest
    assert "deploy" not in merged["services"]["web"]
