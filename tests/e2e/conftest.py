"""One stack per mode for the end-to-end tests."""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support.stack import Stack, running_stack


@pytest.fixture(scope="package")
def stack(redis_url: str) -> Iterator[Stack]:
    """Individual mode, as ``make up`` starts it."""
    redis.Redis.from_url(redis_url).flushdb()
    with running_stack(redis_url) as running:
        yield running


@pytest.fixture(scope="package")
def batch_stack(redis_url: str, stack: Stack) -> Iterator[Stack]:
    """Batch mode, as ``make up-batch`` starts it, on a queue of its own."""
    with running_stack(redis_url, batch=True, BATCH_SIZE="4", BATCH_TIMEOUT="0.2",
                       CELERY_QUEUE="inference-batch") as running:
        yield running
