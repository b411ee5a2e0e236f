"""The model benchmarks: options, a tiny real run each (the GPU one on the CPU too), the GPU table."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loadtest import gpu_benchmark, model_benchmark


@pytest.mark.parametrize(("gpu", "option", "value"), [
    (False, "--sizes", "0,1"), (False, "--sizes", "a"), (False, "--sizes", ""), (True, "--sizes", "-1"),
    (True, "--variants", "fp8"), (True, "--variants", ""), (True, "--warmup", "0")])
def test_defaults_and_bad_options(gpu: bool, option: str, value: str) -> None:
    with pytest.raises(SystemExit):
        (gpu_benchmark.parse_args if gpu else model_benchmark.main)([option, value])
    assert gpu_benchmark.parse_args(["--sizes", "4,1,2,4"]).sizes == [1, 2, 4]
    args = gpu_benchmark.parse_args([])
    assert (args.model, args.weights, args.device, args.sizes[-1]) == ("resnet50", "random", "cuda", 256)
    assert [v.name for v in args.variants] == ["fp32", "fp32-cl", "fp16", "fp16-cl"]


def test_a_real_run_writes_json_and_only_its_markdown_section(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    report_path, markdown = tmp_path / "bench.json", tmp_path / "README.md"
    markdown.write_text("# Title\n\n<!-- BEGIN model-benchmark -->\nold numbers\n"
                        "<!-- END model-benchmark -->\n\nKept.\n")
    argv = ["--sizes", "1,2", "--repeats", "2", "--warmup", "1", "--threads", "2",
            "--json", str(report_path), "--markdown", str(markdown), "--section", "model-benchmark"]
    assert model_benchmark.main(argv) == 0
    report = json.loads(report_path.read_text())
    assert report["command"] == "python -m loadtest.model_benchmark " + " ".join(argv)
    assert report["machine"]["threads"] == 2 and report["preprocess"]["per_image_ms"] > 0
    one, two = report["forward"]
    assert (one["batch_size"], two["batch_size"], one["efficiency"]) == (1, 2, 1.0)
    assert two["efficiency"] == pytest.approx(one["median_ms"] * 2 / two["median_ms"])
    text = markdown.read_text()
    assert "old numbers" not in text and text.startswith("# Title") and "Kept." in text
    assert capsys.readouterr().out.strip() in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_without_cuda_it_says_so_exits_2_and_writes_nothing(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_benchmark.main(["--output", str(tmp_path / "gpu.md")]) == gpu_benchmark.EXIT_NO_CUDA == 2
    assert "CUDA is not available" in capsys.readouterr().err and not (tmp_path / "gpu.md").exists()


def test_gpu_measure_times_each_size_and_the_table_has_a_row_per_size() -> None:
    kind, rows = gpu_benchmark.measure("null", None, torch.device("cpu"), gpu_benchmark.VARIANTS["fp32-cl"],
                                       [1, 2], repeats=2, warmup=1)
    sizes = [(r["batch_size"], r["error"]) for r in rows]
    assert kind == "TorchScript (frozen)" and sizes == [(1, None), (2, None)]
    rows.append({"variant": "fp32-cl", "batch_size": 256, "error": "out of memory"})
    machine = {"device": "cuda:0 (Some GPU)", "torch": "2", "python": "3", "cpu": "c", "cores": 16}
    text = gpu_benchmark.render_markdown({"command": "c", "model": "m", "weights": "w", "cudnn_benchmark": 1,
                                          "machine": machine, "repeats": 2, "warmup": 1,
                                          "modules": {"fp32-cl": kind}, "rows": rows})
    assert "| Batch size | fp32-cl ms | fp32-cl images/s |" in text and "| 256 | out of memory |  |" in text
    assert f"| 1 | {rows[0]['median_ms']:.2f} |" in text and "Some GPU" in text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_tiny_real_gpu_run_writes_its_section(tmp_path: Path) -> None:
    output, report_path = tmp_path / "gpu.md", tmp_path / "gpu.json"
    output.write_text("# Header kept\n")
    argv = ["--model", "resnet18", "--sizes", "1,2", "--variants", "fp32,fp16-cl", "--repeats", "2",
            "--warmup", "1", "--output", str(output), "--json", str(report_path)]
    assert gpu_benchmark.main(argv) == 0
    report = json.loads(report_path.read_text())
    assert [(r["variant"], r["batch_size"]) for r in report["rows"]] == \
        [("fp32", 1), ("fp32", 2), ("fp16-cl", 1), ("fp16-cl", 2)]
    assert output.read_text().startswith(f"# Header kept\n\n<!-- BEGIN {gpu_benchmark.SECTION} -->")
