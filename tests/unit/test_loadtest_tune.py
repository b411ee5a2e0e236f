"""loadtest.tune: the grid, the load levels and the session order."""

from __future__ import annotations

import argparse

import pytest

from loadtest.tune import build_sessions, grid, parse_args, parse_loads


def test_parse_loads() -> None:
    assert parse_loads("low=2,medium=8,high=20") == {"low": 2, "medium": 8, "high": 20}
    for bad in ("low", "low=x", "=3", "low=0"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_loads(bad)


def test_grid_is_sizes_times_timeouts_after_the_baseline() -> None:
    variants = grid([2, 8], [0.05, 2.0], "adaptive")
    assert [v.name for v in variants] == ["individual", "b2-t0.05", "b2-t2", "b8-t0.05", "b8-t2"]
    assert variants[2].env == {
        "USE_BATCH_PROCESSING": "true",
        "BATCH_SIZE": "2",
        "BATCH_TIMEOUT": "2",
        "BATCH_POLICY": "adaptive",
    }
    assert [v.name for v in grid([4], [0.5], "timeout", baseline=False)] == ["b4-t0.5"]


def test_sessions_measure_every_level_per_stack() -> None:
    sessions = build_sessions(grid([4], [0.5], "timeout"), {"high": 20, "low": 2, "also-low": 2}, 15.0, 2)
    assert [(s.variant.name, s.repeat) for s in sessions] == [
        ("individual", 1),
        ("b4-t0.5", 1),
        ("individual", 2),
        ("b4-t0.5", 2),
    ]
    assert [(ld.users, ld.roles, ld.duration_s) for ld in sessions[0].loads] == [
        (2, ("low", "also-low"), 15.0),
        (20, ("high",), 15.0),
    ]


def test_defaults_and_quick() -> None:
    full = parse_args([])
    assert (full.sizes, full.timeouts, full.loads) == (
        [2, 4, 8],
        [0.05, 0.5, 2.0],
        {"low": 2, "medium": 8, "high": 20},
    )
    quick = parse_args(["--quick", "--sizes", "4"])
    assert quick.sizes == [4] and quick.duration == 3.0
