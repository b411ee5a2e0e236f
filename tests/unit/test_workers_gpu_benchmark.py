"""workers.gpu_benchmark: its refusal without CUDA, its measuring loop (run here on the
CPU with the null model), its table, and one tiny real run where a GPU exists."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from workers.gpu_benchmark import (
    EXIT_NO_CUDA,
    SECTION,
    VARIANTS,
    GpuReport,
    Row,
    main,
    measure,
    parse_args,
    render_markdown,
)


def _row(variant: str, size: int, ms: float | None, error: str | None = None) -> Row:
    return Row(variant=variant, batch_size=size, median_ms=ms, min_ms=ms, max_ms=ms,
               images_per_s=None if ms is None else size * 1000 / ms, error=error)


def test_defaults_are_resnet50_powers_of_two_to_256_fp32_and_fp16_with_channels_last() -> None:
    args = parse_args([])
    assert (args.model, args.weights, args.device) == ("resnet50", "random", "cuda")
    assert args.sizes == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert [v.name for v in args.variants] == ["fp32", "fp32-cl", "fp16", "fp16-cl"]
    assert args.output == Path("docs/benchmarks-gpu.md") and args.jit and args.cudnn_benchmark


@pytest.mark.parametrize("argv", [["--variants", "fp8"], ["--variants", ""], ["--sizes", "0,1"]])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_cuda_it_says_so_exits_2_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output, report = tmp_path / "gpu.md", tmp_path / "gpu.json"
    assert main(["--output", str(output), "--json", str(report)]) == EXIT_NO_CUDA == 2
    assert "CUDA is not available" in capsys.readouterr().err
    assert not output.exists() and not report.exists()


def test_measure_times_each_size_of_a_variant() -> None:
    kind, rows = measure("null", None, torch.device("cpu"), VARIANTS["fp32-cl"], [1, 2], repeats=2, warmup=1)
    assert kind == "TorchScript (frozen)"
    assert [(row["variant"], row["batch_size"], row["error"]) for row in rows] == \
        [("fp32-cl", 1, None), ("fp32-cl", 2, None)]
    for row in rows:
        assert row["median_ms"] is not None and row["images_per_s"] is not None
        assert row["images_per_s"] == pytest.approx(row["batch_size"] * 1000 / row["median_ms"])


def test_the_table_has_a_row_per_size_and_two_columns_per_variant() -> None:
    report: GpuReport = {
        "command": "python -m workers.gpu_benchmark --sizes 1,256", "model": "resnet50", "weights": "random",
        "machine": {"device": "cuda:0 (Some GPU)", "gpu_memory_gib": 80.0, "cuda": "12.4", "cudnn": 90100,
                    "torch": "2.x", "python": "3.11", "cpu": "Some CPU", "cores": 16},
        "jit": True, "cudnn_benchmark": True, "repeats": 20, "warmup": 5,
        "modules": {"fp32": "TorchScript (frozen)", "fp16-cl": "eager"},
        "rows": [_row("fp32", 1, 2.0), _row("fp32", 256, None, "out of memory"),
                 _row("fp16-cl", 1, 1.0), _row("fp16-cl", 256, 40.0)],
    }
    text = render_markdown(report)
    assert "| Batch size | fp32 ms | fp32 images/s | fp16-cl ms | fp16-cl images/s |" in text
    assert "| 1 | 2.00 | 500 | 1.00 | 1000 |" in text
    assert "| 256 | out of memory |  | 40.00 | 6400 |" in text
    assert "fp16-cl: eager" in text and report["command"] in text and "Some GPU" in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_tiny_real_run_writes_its_section(tmp_path: Path) -> None:
    output, report_path = tmp_path / "gpu.md", tmp_path / "gpu.json"
    output.write_text("# Header kept\n")
    argv = ["--model", "resnet18", "--sizes", "1,2", "--variants", "fp32,fp16-cl", "--repeats", "2",
            "--warmup", "1", "--output", str(output), "--json", str(report_path)]
    assert main(argv) == 0
    report = json.loads(report_path.read_text())
    assert [(row["variant"], row["batch_size"]) for row in report["rows"]] == \
        [("fp32", 1), ("fp32", 2), ("fp16-cl", 1), ("fp16-cl", 2)]
    assert all(row["median_ms"] > 0 for row in report["rows"])
    text = output.read_text()
    assert text.startswith("# Header kept\n") and f"<!-- BEGIN {SECTION} -->" in text and "| 2 |" in text
