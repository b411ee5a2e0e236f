"""loadtest.markdown: marked sections, tables and number formatting."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.markdown import fmt, fmt_spread, replace_section, table
from loadtest.results import Spread


def test_creates_the_file_with_a_title(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "b.md"
    replace_section(path, "tuning", "body 1")
    assert path.read_text() == "# Benchmarks\n\n<!-- BEGIN tuning -->\nbody 1\n<!-- END tuning -->\n"


def test_appends_then_replaces_in_place(tmp_path: Path) -> None:
    path = tmp_path / "b.md"
    path.write_text("# T\n\n<!-- BEGIN other -->\nkeep\n<!-- END other -->\n")
    replace_section(path, "tuning", "one")
    replace_section(path, "tuning", "two\n")
    assert path.read_text() == (
        "# T\n\n<!-- BEGIN other -->\nkeep\n<!-- END other -->\n\n"
        "<!-- BEGIN tuning -->\ntwo\n<!-- END tuning -->\n"
    )


def test_unbalanced_markers_are_an_error(tmp_path: Path) -> None:
    path = tmp_path / "b.md"
    path.write_text("<!-- BEGIN tuning -->\nhalf\n")
    with pytest.raises(ValueError, match="without"):
        replace_section(path, "tuning", "x")
    assert path.read_text() == "<!-- BEGIN tuning -->\nhalf\n"
    with pytest.raises(ValueError):
        replace_section(path, "a -->", "x")


def test_table_and_numbers() -> None:
    assert table(["A", "B"], [["1", "2"]]) == "| A | B |\n|---|---|\n| 1 | 2 |"
    assert fmt(None) == "—" and fmt(2.345, 2) == "2.35" and fmt(1234.5, 0) == "1234"
    assert fmt_spread(Spread(2.0, 1.0, 3.0, 2), 1) == "2.0 (1.0–3.0)"
    assert fmt_spread(Spread(2.0, 2.0, 2.0, 2), 1) == "2.0"
    assert fmt_spread(None) == "—"
