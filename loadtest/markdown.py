"""Markdown helpers: tables, number formatting and replacing one marked section of a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .results import Spread

__all__ = ["fmt", "fmt_spread", "replace_section", "table"]


def replace_section(path: Path, name: str, body: str, title: str = "# Benchmarks") -> None:
    """Put ``body`` between section ``name``'s markers in ``path``, leaving the rest of the file as it was
    (a missing file starts with ``title``, missing markers are appended, a BEGIN without END is an error)."""
    if not name or "-->" in name:
        raise ValueError(f"bad section name {name!r}: use a short word such as load-comparison")
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else f"{title}\n"
    start = text.find(begin)
    if start < 0:
        text = f"{text.rstrip()}\n\n{block}\n"
    else:
        stop = text.find(end, start)
        if stop < 0:
            raise ValueError(f"{path}: {begin} without {end}; fix the file by hand")
        text = text[:start] + block + text[stop + len(end) :]
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary file and rename, so a crash never leaves half a report.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A pipe table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def fmt(value: float | None, digits: int = 1) -> str:
    """A number with ``digits`` decimals, or an em dash when there is none."""
    return "—" if value is None else f"{value:.{digits}f}"


def fmt_spread(value: Spread | None, digits: int = 1) -> str:
    """``median (min–max)``, or just the median when there was one repeat."""
    if value is None:
        return "—"
    if value.n == 1 or value.low == value.high:
        return fmt(value.median, digits)
    return f"{fmt(value.median, digits)} ({fmt(value.low, digits)}–{fmt(value.high, digits)})"
