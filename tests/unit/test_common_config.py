"""The one environment parser: variables, parsers, settings classes and docs/configuration.md."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from batching.scheduler import POLICIES
from common import config
from common.config import COMMON, GROUPS, VARIABLES, ConfigError, load, markdown, parse_bool, value

ROOT = Path(__file__).resolve().parents[2]


def test_parse_bool_reads_the_usual_words_and_nothing_else() -> None:
    assert {parse_bool(word) for word in ("1", "true", "TRUE", "yes", "On", " on ")} == {True}
    assert {parse_bool(word) for word in ("0", "false", "No", "off", "OFF")} == {False}
    for word in ("maybe", "2", "enabled", "t"):
        with pytest.raises(ValueError, match="true or false"):
            parse_bool(word)


def test_every_default_parses_and_empty_means_the_default() -> None:
    for name, variable in VARIABLES.items():
        if variable.parse is not None:
            assert value(name, {name: ""}) == value(name, {}), name  # raises ConfigError naming it if bad
    assert load(config.WebSettings, {}) == load(config.WebSettings, {name: "" for name in VARIABLES})
    assert value("PROMETHEUS_MULTIPROC_DIR", {"PROMETHEUS_MULTIPROC_DIR": ""}) is None
    assert load(config.WorkerSettings, {}).bind_host == "127.0.0.1"  # the listeners default to loopback


def test_environment_is_parsed_into_typed_fields_and_api_keys_kept_out_of_the_repr() -> None:
    settings = load(config.WebSettings, {"MAX_UPLOAD_MB": "2.5", "MAX_IMAGE_PIXELS": "1000", "UNRELATED": "x",
                                         "RESULT_TIMEOUT": "12", "DEFAULT_TOP_K": "3",
                                         "USE_BATCH_PROCESSING": "TRUE", "API_KEYS": " k1 , k2,, "})
    assert (settings.max_upload_mb, settings.max_image_pixels, settings.result_timeout) == (2.5, 1000, 12.0)
    assert settings.default_top_k == 3 and settings.use_batch_processing is True
    assert settings.api_keys == ("k1", "k2") and "k1" not in repr(settings)
    settings = load(config.WebSettings, {"RESULT_TIMEOUT": "soon", "MAX_UPLOAD_MB": "3"}, result_timeout=4.0)
    assert (settings.result_timeout, settings.max_upload_mb) == (4.0, 3.0)  # overrides skip parsing
    # The broker and the result store default to REDIS_URL.
    celery = load(config.CelerySettings, {"REDIS_URL": "redis://h:1/2"})
    assert (celery.broker_url, celery.result_backend) == ("redis://h:1/2", "redis://h:1/2")
    celery = load(config.CelerySettings, {"REDIS_URL": "redis://h:1/2", "CELERY_BROKER_URL": "redis://b:1/0"})
    assert (celery.broker_url, celery.result_backend) == ("redis://b:1/0", "redis://h:1/2")


@pytest.mark.parametrize(("name", "raw"), [
    ("MAX_UPLOAD_MB", "ten"), ("MAX_UPLOAD_MB", "0"), ("MAX_IMAGE_PIXELS", "-5"), ("RESULT_TIMEOUT", "soon"),
    ("RESULT_TIMEOUT", "inf"), ("DEFAULT_TOP_K", "0"), ("DEFAULT_TOP_K", "1001"),
    ("USE_BATCH_PROCESSING", "maybe"), ("WEB_PORT", "70000"), ("WEB_THREADS", "0"), ("LOG_LEVEL", "loud"),
    ("BROKER_VISIBILITY_TIMEOUT", "1.5"), ("BATCH_POLICY", "greedy"), ("DEVICE", "tpu"),
    ("BATCH_TIMEOUT", "nan"), ("REDIS_MAXMEMORY", "lots"), ("MAX_QUEUE_LENGTH", "-1"),
    ("PRECISION", "fp8"), ("GPU_DECODE", "gpu"), ("SIMULATED_BATCH_MS", "-1"), ("SIMULATED_ITEM_MS", "inf"),
])
def test_a_bad_value_names_its_variable(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}=") as raised:
        value(name, {name: raw})
    assert repr(raw) in str(raised.value)


# -- docs/configuration.md and the README ----------------------------------------------------

def test_documented_table_is_the_one_printed_from_variables() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    begin, end = "<!-- BEGIN env-table -->\n", "\n<!-- END env-table -->"
    assert begin in text and end in text, "docs/configuration.md has no env-table markers"
    assert text[text.index(begin) + len(begin):text.index(end)] == markdown(), \
        "run: python -m common.config, paste into docs/configuration.md"


def test_the_tables_hold_each_variable_once_in_its_group_none_empty_and_the_common_ones_once() -> None:
    sections = markdown().split("## ")[1:]
    assert [section.splitlines()[0] for section in sections] == list(GROUPS)
    names = [row.split("`")[1] for section in sections for row in section.splitlines()[4:] if row]
    assert names == [v.name for group in GROUPS for v in VARIABLES.values() if v.group == group]
    assert sorted(names) == sorted(VARIABLES) and {v.group for v in VARIABLES.values()} == set(GROUPS)
    assert [row.split("`")[1] for row in markdown(COMMON).splitlines()[2:]] == list(COMMON)
    assert len(set(COMMON)) == len(COMMON) and config.BATCH_POLICIES == POLICIES  # the scheduler's


def test_python_m_common_config_prints_the_tables() -> None:
    for args, names in (([], None), (["--common"], COMMON)):
        done = subprocess.run([sys.executable, "-m", "common.config", *args], cwd=ROOT, capture_output=True,
                              text=True, check=True, timeout=60)
        assert done.stdout == markdown(names) + "\n"


# -- nobody else reads the environment -------------------------------------------------------

#: Project code: everything that runs, outside common/config.py.
SCANNED = ("webapp", "workers", "batching", "loadtest", "deploy", "common", "celeryconfig.py")
#: The peers `make compare-peers` measures against read their settings as such programs do.
PEERS = "loadtest/peer_servers"


#: Handing the whole environment to a child process, or setting a key, is no read.
_ALLOWED = re.compile(r"\{\*\*os\.environ\b|dict\(os\.environ\)|os\.environ\.copy\(\)"
                      r"|os\.environ\[[^]]+\]\s*=(?!=)|os\.environ\.update\(")
_READ = re.compile(r"\bos\.environ\b|\bgetenv\(|from os import .*\b(environ|getenv)\b")


def environment_reads(source: str, filename: str = "<source>") -> list[str]:
    """Each line of ``source`` that reads the environment, as ``file:line: code``."""
    return [f"{filename}:{number}: {line.strip()}" for number, line in enumerate(source.splitlines(), 1)
            if _READ.search(_ALLOWED.sub("", line))]


@pytest.mark.parametrize(("code", "reads"), [
    ("x = os.environ.get('A')", True), ("x = os.getenv('A', '1')", True), ("x = 'A' in os.environ", True),
    ("from os import environ", True), ("env = os.environ if e is None else e", True),
    ("if os.environ['A'] == '1':", True), ("env = {**os.environ, 'A': '1'}", False),
    ("env = dict(os.environ)", False), ("env = os.environ.copy()", False), ("os.environ['A'] = '1'", False),
    ("os.environ.update(A='1')", False), ("settings = load(config.WebSettings)", False),
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
