"""loadtest.progress: one line per phase, with elapsed time and ETA."""

from __future__ import annotations

import io

import pytest

from loadtest.progress import Progress, format_seconds


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (0, 59.4, 75, 3700)] == ["0s", "59s", "1m15s", "1h01m40s"]


def test_lines_count_phases_and_eta_follows_the_plan() -> None:
    out = io.StringIO()
    progress = Progress(3, 300.0, out)
    progress.start("first", 100.0)
    progress.finish()
    progress.start("second", 100.0)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[1/3 | elapsed 0s | ETA 5m00s] first")
    assert lines[1].startswith("[2/3 |") and lines[1].endswith("] second")
    # the first phase took ~0 s against 100 planned: the pace is clamped, so 200 s left reads as >= 100 s
    assert 100.0 <= progress.eta() <= 200.0


def test_skip_shrinks_the_plan() -> None:
    progress = Progress(5, 500.0, io.StringIO())
    progress.skip(2, 200.0)
    assert (progress.total_phases, progress.planned_s) == (3, 300.0)


def test_bad_plan() -> None:
    with pytest.raises(ValueError):
        Progress(0, 10.0)
