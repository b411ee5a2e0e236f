"""The whole stack, gunicorn and a worker, with RabbitMQ as the broker (results on Redis)."""
from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest

from tests.e2e.test_api import fetch, upload
from tests.support.photos import CAT_CLASSES, COFFEE_CLASSES, encode, photo
from tests.support.stack import Stack, running_stack


@pytest.fixture(scope="module")
def amqp_stack(redis_url: str, amqp_url: str) -> Iterator[Stack]:
    with running_stack(redis_url, CELERY_BROKER_URL=amqp_url, CELERY_QUEUE="e2e-amqp") as running:
        yield running


def test_ready_and_serving_sync_and_async_through_rabbitmq(amqp_stack: Stack) -> None:
    with urllib.request.urlopen(f"{amqp_stack.url}/readyz", timeout=10) as response:
        assert response.status == 200  # the broker answers and a worker answers ping over AMQP
    status, body = upload(f"{amqp_stack.url}/predict", encode(photo("chelsea")))
    assert status == 200, body
    assert body["predictions"][0]["class_id"] in CAT_CLASSES
    status, accepted = upload(f"{amqp_stack.url}/predict?async=true", encode(photo("coffee")))
    assert status == 202, accepted
    while True:  # each GET is a real round trip; the result arrives within the test timeout
        status, polled = fetch(amqp_stack.url + accepted["status_url"])
        if polled["status"] not in {"PENDING", "STARTED"}:
            break
    assert status == 200 and polled["status"] == "SUCCESS", polled
    assert polled["result"]["predictions"][0]["class_id"] in COFFEE_CLASSES
