"""The model benchmark: options, a tiny real run (the GPU mode's timing on the CPU too), the GPU table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loadtest import model_benchmark as mb


@pytest.mark.parametrize("argv", [["--sizes", "0,1"], ["--sizes", "a"], ["--sizes", ""], ["--sizes", "-1"],
                                  ["--gpu-variants", "fp8"], ["--gpu-variants", ""], ["--repeats", "0"],
                                  ["--gpu-variants", "fp32", "--warmup", "0"]])
def test_options_and_bad_ones(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        mb.parse_args(argv)
    args = mb.parse_args(["--sizes", "4,1,2,4", "--gpu-variants", "fp16,fp32-cl,fp16", "--warmup", "1"])
    assert (args.sizes, args.gpu_variants, args.repeats) == ([1, 2, 4], ["fp16", "fp32-cl"], 20)


def test_a_real_run_writes_json_and_its_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report_path, markdown = tmp_path / "bench.json", tmp_path / "README.md"
    markdown.write_text("# Title\n\n<!-- BEGIN model-benchmark -->\nold numbers\n"
                        "<!-- END model-benchmark -->\n\nKept.\n")
    argv = ["--sizes", "1,2", "--repeats", "2", "--warmup", "1", "--threads", "2",
            "--json", str(report_path), "--markdown", str(markdown), "--section", "model-benchmark"]
    assert mb.main(argv) == 0
    report = json.loads(report_path.read_text())
    assert report["command"] == "python -m loadtest.model_benchmark " + " ".join(argv)
    assert report["machine"]["threads"] == 2 and report["preprocess"]["per_image_ms"] > 0
    one, two = report["forward"]
    assert (one["batch_size"], two["batch_size"], one["efficiency"]) == (1, 2, 1.0)
    assert two["efficiency"] == pytest.approx(one["median_ms"] * 2 / two["median_ms"])
    text = markdown.read_text()
    assert "old numbers" not in text and text.startswith("# Title") and "Kept." in text
    assert capsys.readouterr().out.strip() in text and "| 2 | " in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_mode_without_cuda_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gpu.md"
    assert mb.main(["--gpu-variants", "fp32", "--markdown", str(out)]) == mb.EXIT_NO_CUDA == 2
    assert "CUDA is not available" in capsys.readouterr().err and not out.exists()


def test_gpu_measure_times_each_size_and_the_table_has_a_row_per_variant_and_size() -> None:
    args = mb.parse_args(["--model", "null", "--sizes", "1,2", "--repeats", "2", "--warmup", "1"])
    rows = mb.measure(args, torch.device("cpu"), "fp32-cl")
    assert [(r["batch_size"], r["error"]) for r in rows] == [(1, None), (2, None)]
    assert rows[0]["module"] == "TorchScript (frozen)" and rows[0]["efficiency"] == 1.0
    rows.append({**rows[0], "batch_size": 256, "error": "out of memory"})
    machine = {"device": "cuda:0 (Some GPU)", "torch": "2", "python": "3", "cpu": "c", "cores": 16,
               "usable_cores": 16, "threads": 1, "gpu_memory_gib": 80.0, "cuda": "12", "cudnn": 9}
    text = mb.render_markdown({"command": "c", "model": "m", "weights": "w", "machine": machine, "repeats": 2,
                               "warmup": 1, "rows": rows})
    assert "| Variant | Batch size | Forward median ms (min-max) |" in text and "(Some GPU)" in text
    assert "| fp32-cl | 256 | out of memory |  |  |  |" in text and "fp32-cl: TorchScript (frozen)." in text
    assert f"| fp32-cl | 1 | {rows[0]['median_ms']:.2f} (" in text and "GPU memory 80.0 GiB, CUDA 12" in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_tiny_real_gpu_run_writes_its_section(tmp_path: Path) -> None:
    output, report_path = tmp_path / "gpu.md", tmp_path / "gpu.json"
    output.write_text("# Header kept\n")
    assert mb.main(["--model", "resnet18", "--weights", "random", "--sizes", "1,2", "--gpu-variants",
                    "fp32,fp16-cl", "--repeats", "2", "--warmup", "1", "--markdown", str(output),
                    "--json", str(report_path)]) == 0
    assert [(r["variant"], r["batch_size"]) for r in json.loads(report_path.read_text())["rows"]] == \
        [("fp32", 1), ("fp32", 2), ("fp16-cl", 1), ("fp16-cl", 2)]
    assert output.read_text().startswith(f"# Header kept\n\n<!-- BEGIN {mb.GPU_SECTION} -->")
