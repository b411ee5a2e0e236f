"""Shared fixtures; markers come from each test's folder."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from deploy import amqpurl
from tests.support.brokers import TEST_AMQP_URL, amqp_answers, private_vhost

TESTS = Path(__file__).parent
#: Tests flush this database before and after use: never the stack's db 0.
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def pytest_configure(config: pytest.Config) -> None:
    """Every app and worker the tests start reads a repository of the default model alone, so
    models a developer adds to ``models/`` (``make example``) change no test."""
    if "MODEL_REPOSITORY" not in os.environ:
        folder = Path(tempfile.mkdtemp(prefix="test-models-"))
        shutil.copytree(TESTS.parent / "models" / "efficientnet_lite0", folder / "efficientnet_lite0")
        os.environ["MODEL_REPOSITORY"] = str(folder)
        config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(str(item.fspath)).relative_to(TESTS).parts[0]
        if folder in {"unit", "integration", "e2e"}:
            item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture(scope="session")
def redis_url() -> str:
    return TEST_REDIS_URL


def flushed_db(redis_url: str) -> Iterator[redis.Redis]:
    """A client of ``redis_url``'s database, flushed now and when the caller is done."""
    client = redis.Redis.from_url(redis_url, socket_timeout=None)  # blpop waits longer than the default
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def clean_redis(redis_url: str) -> Iterator[redis.Redis]:
    """A real Redis database, flushed before and after the test (as rq's tests do)."""
    yield from flushed_db(redis_url)


@pytest.fixture(scope="module")
def module_redis(redis_url: str) -> Iterator[redis.Redis]:
    """The same, flushed before and after a whole module (module-scoped workers)."""
    yield from flushed_db(redis_url)


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    """RabbitMQ (``TEST_AMQP_URL``) in a vhost of this session's own; skipped when none answers."""
    if not amqp_answers(TEST_AMQP_URL):
        host, port, _ = amqpurl.parse(TEST_AMQP_URL)
        pytest.skip(f"no RabbitMQ answers at {host}:{port} (TEST_AMQP_URL; make deps-test starts one)")
    with private_vhost(TEST_AMQP_URL) as url:
        yield url


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> str:
    """Each broker in turn: the tests' Redis database, then RabbitMQ (results stay on Redis)."""
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "amqp_url"))
