"""A request's deadline: the client's timeout, capped, as an absolute ``expires``."""
from __future__ import annotations

import time

import pytest
from werkzeug.wrappers import Request

from webapp.deadlines import Deadline, requested_timeout
from webapp.exceptions import InvalidParameter


def request(query: str = "", **headers: str) -> Request:
    return Request.from_values(f"/predict{query}", headers=headers)


@pytest.mark.parametrize(("req", "seconds"), [
    (request(), None),
    (request("?timeout=2.5"), 2.5),
    (request(**{"Request-Timeout": "4"}), 4.0),
    (request(**{"X-Request-Timeout": " 0.25 "}), 0.25),
    # The query wins over the headers, Request-Timeout over X-Request-Timeout.
    (request("?timeout=1", **{"Request-Timeout": "3"}), 1.0),
    (request(**{"Request-Timeout": "3", "X-Request-Timeout": "2"}), 3.0),
])
def test_requested_timeout(req: Request, seconds: float | None) -> None:
    assert requested_timeout(req) == seconds


@pytest.mark.parametrize("raw", ["0", "0.05", "5e-324", "-2", "", "abc", "nan", "inf", "1e400", "1" * 33])
def test_bad_timeout_is_invalid_parameter(raw: str) -> None:
    with pytest.raises(InvalidParameter, match="timeout"):
        requested_timeout(request(f"?timeout={raw}"))


def test_deadline_is_capped_at_the_longest() -> None:
    before = time.time()
    deadline = Deadline.for_request(request("?timeout=500"), 30.0)
    assert before + 30.0 <= deadline.at <= time.time() + 30.0
    assert 29.0 < deadline.remaining() <= 30.0


def test_expires_is_an_aware_utc_datetime_of_the_same_instant() -> None:
    deadline = Deadline.after(10.0)
    expires = deadline.expires()
    assert expires.tzinfo is not None and expires.timestamp() == pytest.approx(deadline.at)


def test_passed_deadline_has_nothing_remaining() -> None:
    assert Deadline.after(-1.0).remaining() < 0
