"""The one environment parser: variables, parsers, settings classes and the table of docs/configuration.md."""
from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from batching.scheduler import POLICIES
from common import config
from common.config import (
    VARIABLES,
    CelerySettings,
    ConfigError,
    GunicornSettings,
    WebSettings,
    WorkerSettings,
    load,
    markdown_table,
    parse_bool,
    value,
)

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_CLASSES = (CelerySettings, WebSettings, GunicornSettings, WorkerSettings)
BOOLEANS = sorted(name for name, v in VARIABLES.items() if v.parse is parse_bool)


# -- parsers -------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("On", True), (" on ", True),
    ("0", False), ("false", False), ("No", False), ("off", False), ("OFF", False),
])
def test_parse_bool(raw: str, expected: bool) -> None:
    assert parse_bool(raw) is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "enabled", "t"])
def test_parse_bool_rejects(raw: str) -> None:
    with pytest.raises(ValueError, match="true or false"):
        parse_bool(raw)


def test_every_boolean_variable_reads_the_same_words() -> None:
    """One boolean parser: web, worker and celeryconfig agree, ``on``/``off`` included."""
    assert {"USE_BATCH_PROCESSING", "MODEL_JIT", "WORKER_SEND_TASK_EVENTS", "TASK_SEND_SENT_EVENT"} <= \
        set(BOOLEANS)
    for name in BOOLEANS:
        assert (value(name, {name: "on"}), value(name, {name: "OFF"})) == (True, False), name
    assert load(CelerySettings, {"WORKER_SEND_TASK_EVENTS": "off"}).send_task_events is False
    assert load(WebSettings, {"USE_BATCH_PROCESSING": "on"}).use_batch_processing is True


def test_every_default_parses() -> None:
    for name, variable in VARIABLES.items():
        if variable.parse is not None:
            value(name, {})  # raises ConfigError naming it if not


def test_unset_and_empty_mean_the_default() -> None:
    assert load(WebSettings, {}) == load(WebSettings, {name: "" for name in VARIABLES})
    assert value("USE_BATCH_PROCESSING", {"USE_BATCH_PROCESSING": ""}) is False
    assert value("PROMETHEUS_MULTIPROC_DIR", {"PROMETHEUS_MULTIPROC_DIR": ""}) is None


def test_web_defaults() -> None:
    assert load(WebSettings, {}) == WebSettings(
        use_batch_processing=False, max_image_pixels=40_000_000, max_upload_mb=10.0, result_timeout=30.0,
        result_poll_interval=0.5, default_top_k=5, ready_cache_seconds=2.0, broker_retry_after=5,
        prometheus_multiproc_dir=None, async_result_ttl=300.0, result_expires=3600, max_queue_length=200,
        max_sync_queue_length=0, max_waiting_requests=None, images_by_reference=True,
        web_threads=64, api_keys=None, metrics_public=True, model_repository="models", default_model=None)


def test_api_keys_are_parsed_and_kept_out_of_the_repr() -> None:
    settings = load(WebSettings, {"API_KEYS": " k1 , k2,, "})
    assert settings.api_keys == ("k1", "k2") and "k1" not in repr(settings)


def test_gunicorn_defaults_listen_on_loopback() -> None:
    settings = load(GunicornSettings, {})
    assert (settings.bind_host, settings.port) == ("127.0.0.1", 8000)
    assert (settings.workers, settings.threads) == (1, 64)
    assert settings.access_log is None and settings.log_level == "info"


def test_environment_is_parsed_into_typed_fields() -> None:
    settings = load(WebSettings, {"MAX_UPLOAD_MB": "2.5", "MAX_IMAGE_PIXELS": "1000", "RESULT_TIMEOUT": "12",
                                  "DEFAULT_TOP_K": "3", "USE_BATCH_PROCESSING": "TRUE", "UNRELATED": "x"})
    assert (settings.max_upload_mb, settings.max_image_pixels, settings.result_timeout) == (2.5, 1000, 12.0)
    assert settings.default_top_k == 3 and settings.use_batch_processing is True


@pytest.mark.parametrize(("settings_class", "name", "raw"), [
    (WebSettings, "MAX_UPLOAD_MB", "ten"), (WebSettings, "MAX_UPLOAD_MB", "0"),
    (WebSettings, "MAX_IMAGE_PIXELS", "-5"), (WebSettings, "RESULT_TIMEOUT", "soon"),
    (WebSettings, "RESULT_TIMEOUT", "inf"), (WebSettings, "DEFAULT_TOP_K", "0"),
    (WebSettings, "DEFAULT_TOP_K", "1001"), (WebSettings, "USE_BATCH_PROCESSING", "maybe"),
    (GunicornSettings, "WEB_PORT", "70000"), (GunicornSettings, "WEB_THREADS", "0"),
    (GunicornSettings, "WEB_LOG_LEVEL", "loud"), (CelerySettings, "CELERY_TASK_SERIALIZER", "pickle"),
    (CelerySettings, "BROKER_VISIBILITY_TIMEOUT", "1.5"), (WorkerSettings, "BATCH_POLICY", "greedy"),
    (WorkerSettings, "DEVICE", "tpu"), (WorkerSettings, "BATCH_TIMEOUT", "nan"),
])
def test_load_names_the_bad_variable(settings_class: type, name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}=") as raised:
        load(settings_class, {name: raw})
    assert repr(raw) in str(raised.value)


def test_overrides_win_over_the_environment_and_skip_its_parsing() -> None:
    settings = load(WebSettings, {"RESULT_TIMEOUT": "not a number", "MAX_UPLOAD_MB": "3"}, result_timeout=4.0)
    assert (settings.result_timeout, settings.max_upload_mb) == (4.0, 3.0)


def test_every_field_is_read_from_a_listed_variable() -> None:
    for settings_class in SETTINGS_CLASSES:
        for field in fields(settings_class):
            assert field.metadata["env"] in VARIABLES, (settings_class.__name__, field.name)


def test_broker_and_backend_default_to_redis_url() -> None:
    settings = load(CelerySettings, {"REDIS_URL": "redis://h:1/2"})
    assert (settings.broker_url, settings.result_backend) == ("redis://h:1/2", "redis://h:1/2")
    settings = load(CelerySettings, {"REDIS_URL": "redis://h:1/2", "CELERY_BROKER_URL": "redis://b:1/0"})
    assert (settings.broker_url, settings.result_backend) == ("redis://b:1/0", "redis://h:1/2")


def test_batch_policies_are_the_schedulers() -> None:
    assert config.BATCH_POLICIES == POLICIES


# -- docs/configuration.md ---------------------------------------------------------

def _documented_table() -> str:
    text = (ROOT / "docs" / "configuration.md").read_text()
    begin, end = "<!-- BEGIN env-table -->\n", "\n<!-- END env-table -->"
    assert begin in text and end in text, "docs/configuration.md has no env-table markers"
    return text[text.index(begin) + len(begin):text.index(end)]


def test_documented_table_is_the_one_printed_from_variables() -> None:
    assert _documented_table() == markdown_table(), \
        "run: python -m common.config, paste into docs/configuration.md"



def test_markdown_table_has_one_row_per_variable() -> None:
    rows = markdown_table().splitlines()[2:]
    assert [row.split("`")[1] for row in rows] == list(VARIABLES)


def test_python_m_common_config_prints_the_table() -> None:
    out = subprocess.run([sys.executable, "-m", "common.config"], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out == markdown_table() + "\n"


# -- nobody else reads the environment ---------------------------------------------

#: Project code: everything that runs, outside common/config.py.
SCANNED = ("webapp", "workers", "batching", "loadtest", "deploy", "common", "celeryconfig.py")
#: Not the project's processes: the peers `make compare-peers` measures it against (a LitServe
#: server in LitServe's own virtualenv, a hand-written Flask + Celery pipeline) read their
#: settings as such programs do.
PEERS = "loadtest/peer_servers"


def _is_environ(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" and \
        isinstance(node.value, ast.Name) and node.value.id == "os"


def environment_reads(source: str, filename: str = "<source>") -> list[str]:
    """Each place ``source`` reads the environment, as ``file:line: code``.

    Any use of ``os.environ`` counts (``.get``, ``[...]``, ``in``, handing it
    on as a mapping), as do ``getenv`` calls and ``from os import environ``;
    except copying the whole environment for a child process
    (``{**os.environ, ...}``, ``dict(os.environ)``, ``os.environ.copy()``)
    and assigning to a key.
    """
    tree = ast.parse(source, filename=filename)
    allowed: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            allowed.update(id(v) for k, v in zip(node.keys, node.values) if k is None and _is_environ(v))
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del)) \
                and _is_environ(node.value):
            allowed.add(id(node.value))
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "dict" and len(node.args) == 1 \
                and not node.keywords and _is_environ(node.args[0]):
            allowed.add(id(node.args[0]))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "copy" and not node.args and _is_environ(node.func.value):
            allowed.add(id(node.func.value))
    found = []
    for node in ast.walk(tree):
        getenv = isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] == "getenv"
        imported = isinstance(node, ast.ImportFrom) and node.module == "os" and \
            any(alias.name in {"environ", "getenv", "environb", "getenvb"} for alias in node.names)
        if getenv or imported or (_is_environ(node) and id(node) not in allowed):
            line = getattr(node, "lineno", 0)
            found.append(f"{filename}:{line}: {source.splitlines()[line - 1].strip()}")
    return sorted(set(found))


@pytest.mark.parametrize(("code", "reads"), [
    ("import os\nx = os.environ.get('A')", True),
    ("import os\nx = os.environ['A']", True),
    ("import os\nx = os.getenv('A', '1')", True),
    ("import os\nx = 'A' in os.environ", True),
    ("import os\nsource = os.environ if e is None else e\nx = source.get('A')", True),
    ("from os import environ\nx = environ.get('A')", True),
    ("import os\nenv = os.environ if e is None else e", True),
    ("import os\nenv = {**os.environ, 'A': '1'}", False),
    ("import os\nenv = dict(os.environ)", False),
    ("import os\nenv = os.environ.copy()", False),
    ("import os\nos.environ['A'] = '1'", False),
    ("environ = {}\n", False),
    ("settings = load(WebSettings)", False),
])
def test_environment_scan_finds_reads(code: str, reads: bool) -> None:
    assert bool(environment_reads(code)) is reads


def test_only_common_config_reads_the_environment() -> None:
    files = [path for name in SCANNED
             for path in ([ROOT / name] if name.endswith(".py") else sorted((ROOT / name).rglob("*.py")))]
    files = [path for path in files if path != ROOT / "common" / "config.py"
             and not path.is_relative_to(ROOT / PEERS)]
    assert len(files) > 20
    reads = [read for path in files
             for read in environment_reads(path.read_text(), str(path.relative_to(ROOT)))]
    assert reads == [], "read settings through common.config.load instead:\n" + "\n".join(reads)
