"""workers.benchmark: the markdown section it owns, and one tiny real run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.benchmark import BEGIN_MARK, END_MARK, main, parse_args, replace_section, write_markdown_section

README = f"""# Title

Intro paragraph.

{BEGIN_MARK}
old numbers
{END_MARK}

## After

Kept as is.
"""


def test_replace_section_keeps_the_rest_of_the_file() -> None:
    updated = replace_section(README, "new numbers")
    assert "old numbers" not in updated
    assert updated == README.replace("old numbers", "new numbers")


def test_replacing_twice_gives_the_same_file() -> None:
    once = replace_section(README, "new numbers\n")
    assert replace_section(once, "new numbers\n") == once


def test_section_is_appended_when_the_file_has_none() -> None:
    block = f"{BEGIN_MARK}\nnumbers\n{END_MARK}\n"
    assert replace_section("# Title\n", "numbers") == f"# Title\n\n{block}"
    assert replace_section("# Title", "numbers") == f"# Title\n\n{block}"


@pytest.mark.parametrize("text", [f"{BEGIN_MARK}\nno end\n", f"{END_MARK}\n{BEGIN_MARK}\n", f"{END_MARK}\n"])
def test_unbalanced_markers_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="unbalanced"):
        replace_section(text, "numbers")


def test_write_markdown_section_creates_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "bench.md"
    path.parent.mkdir()
    write_markdown_section(path, "numbers")
    assert path.read_text() == f"{BEGIN_MARK}\nnumbers\n{END_MARK}\n"


@pytest.mark.parametrize("sizes", ["", "0,1", "a,b"])
def test_bad_sizes_are_refused(sizes: str) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--sizes", sizes])


def test_sizes_are_sorted_and_unique() -> None:
    assert parse_args(["--sizes", "4,1,2,4"]).sizes == [1, 2, 4]


def test_a_real_run_writes_json_and_only_its_markdown_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path, markdown = tmp_path / "bench.json", tmp_path / "README.md"
    markdown.write_text(README)
    argv = ["--sizes", "1,2", "--repeats", "2", "--warmup", "1", "--threads", "2",
            "--json", str(report_path), "--markdown", str(markdown), "--section", "model-benchmark"]
    assert main(argv) == 0

    report = json.loads(report_path.read_text())
    assert report["command"] == "python -m workers.benchmark " + " ".join(argv)
    assert report["machine"]["threads"] == 2 and report["machine"]["cpu"]
    assert report["preprocess"]["per_image_ms"] > 0
    one, two = report["forward"]
    assert (one["batch_size"], two["batch_size"]) == (1, 2)
    assert one["efficiency"] == 1.0
    assert two["efficiency"] == pytest.approx(one["median_ms"] * 2 / two["median_ms"])
    assert len(two["samples_ms"]) == 2 and two["min_ms"] <= two["median_ms"] <= two["max_ms"]

    text = markdown.read_text()
    assert "old numbers" not in text and "Intro paragraph." in text and "Kept as is." in text
    assert "| 2 |" in text and report["command"] in text
    assert capsys.readouterr().out.strip() in text
