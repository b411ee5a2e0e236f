"""Model-only forward-pass time on a CUDA GPU, per batch size and numeric variant.

    python -m loadtest.gpu_benchmark        # resnet50, random weights, into docs/benchmarks-gpu.md

For each variant (float32 or ``torch.autocast`` float16/bfloat16, contiguous or
channels-last: the worker's ``AUTOCAST`` and ``CHANNELS_LAST``) it loads the model as
a worker does (TorchScript-frozen unless ``--no-jit``), then times the forward pass
alone on a batch already on the GPU, for batch sizes 1..256, synchronising the device
after each pass, dropping warm-up runs; it reports the median ms per batch and
images/s. The table goes to stdout and replaces the ``gpu-benchmark`` section of
``--output``. Without CUDA it says so on stderr, writes nothing and exits with 2.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from .model_benchmark import batch_sizes, count, machine_info, progress, publish, summarise, time_each

__all__ = ["EXIT_NO_CUDA", "SECTION", "VARIANTS", "GpuReport", "Row", "Variant", "main", "measure",
           "render_markdown"]

#: Exit status when the machine has no CUDA device.
EXIT_NO_CUDA = 2
#: The section of ``--output`` each run replaces.
SECTION = "gpu-benchmark"
DEFAULT_OUTPUT = Path("docs/benchmarks-gpu.md")
DEFAULT_MODEL = "resnet50"
DEFAULT_SIZES = "1,2,4,8,16,32,64,128,256"
DEFAULT_VARIANTS = "fp32,fp32-cl,fp16,fp16-cl"
DEFAULT_REPEATS = 20
DEFAULT_WARMUP = 5


@dataclass(frozen=True)
class Variant:
    """How the forward pass runs: the worker's ``AUTOCAST`` and ``CHANNELS_LAST``."""

    name: str
    autocast: str
    channels_last: bool


VARIANTS = {v.name: v for v in (
    Variant("fp32", "off", False),
    Variant("fp32-cl", "off", True),
    Variant("fp16", "fp16", False),
    Variant("fp16-cl", "fp16", True),
    Variant("bf16", "bf16", False),
    Variant("bf16-cl", "bf16", True),
)}


class Row(TypedDict):
    """One variant at one batch size; ``error`` (e.g. out of memory) instead of timings."""

    variant: str
    batch_size: int
    median_ms: float | None
    min_ms: float | None
    max_ms: float | None
    images_per_s: float | None
    error: str | None


class GpuReport(TypedDict):
    """What ``--json`` writes."""

    command: str
    machine: dict[str, Any]
    model: str
    weights: str
    jit: bool
    cudnn_benchmark: bool
    repeats: int
    warmup: int
    #: Variant -> the module that ran: "TorchScript (frozen)" or "eager".
    modules: dict[str, str]
    rows: list[Row]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.gpu_benchmark",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name (default: %(default)s)")
    parser.add_argument("--weights", default="random",
                        help="state dict path, 'random', or '' for the model's own (default: %(default)s)")
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--sizes", type=batch_sizes, default=batch_sizes(DEFAULT_SIZES),
                        help="comma-separated batch sizes (default: %(default)s)")
    parser.add_argument("--variants", type=_variants, default=_variants(DEFAULT_VARIANTS),
                        help=f"comma-separated, of {', '.join(VARIANTS)} (default: {DEFAULT_VARIANTS})")
    parser.add_argument("--repeats", type=count(1), default=DEFAULT_REPEATS,
                        help="timed runs per batch size (default: %(default)s)")
    parser.add_argument("--warmup", type=count(1), default=DEFAULT_WARMUP,
                        help="untimed runs first, per batch size (default: %(default)s)")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=True,
                        help="trace and freeze the model as the workers do (default: %(default)s)")
    parser.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.backends.cudnn.benchmark (default: %(default)s)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"markdown file whose {SECTION} section is replaced (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print(f"loadtest.gpu_benchmark: CUDA is not available here (torch {torch.__version__}, "
              f"built for CUDA {torch.version.cuda or 'none'}); run it on a machine with an NVIDIA GPU. "
              "Nothing was written.", file=sys.stderr)
        return EXIT_NO_CUDA
    from workers.model import resolve_device

    device = resolve_device(args.device)
    if device.type != "cuda":
        print(f"loadtest.gpu_benchmark: --device must be cuda or cuda:N, not {args.device!r}",
              file=sys.stderr)
        return EXIT_NO_CUDA
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    weights = args.weights or None
    modules: dict[str, str] = {}
    rows: list[Row] = []
    for variant in args.variants:
        progress(f"{variant.name}: loading {args.model} ...")
        kind, variant_rows = measure(args.model, weights, device, variant, args.sizes, args.repeats,
                                     args.warmup, jit=args.jit)
        modules[variant.name] = kind
        rows += variant_rows
    machine = machine_info(device)
    machine.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   gpu_memory_gib=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1))
    report: GpuReport = {
        "command": "python -m loadtest.gpu_benchmark " + shlex.join(argv),
        "machine": machine,
        "model": args.model,
        "weights": args.weights or "the model's own",
        "jit": args.jit,
        "cudnn_benchmark": args.cudnn_benchmark,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "modules": modules,
        "rows": rows,
    }
    publish(report, render_markdown(report), args.json, args.output, SECTION)
    return 0


def measure(model: str, weights: str | None, device: Any, variant: Variant, sizes: Sequence[int],
            repeats: int, warmup: int, *, jit: bool = True) -> tuple[str, list[Row]]:
    """Time ``variant`` at each batch size on ``device`` (any device: the tests use the CPU).

    Returns the kind of module that ran and one row per size; a size that runs out of
    memory gets an error row, and the larger ones are skipped (same error).
    """
    import torch

    from workers.accel import AUTOCAST_DTYPES
    from workers.model import load_model

    dtype = AUTOCAST_DTYPES[variant.autocast]
    loaded = load_model(model, weights, device, jit=jit, channels_last=variant.channels_last, autocast=dtype)
    module = loaded.module
    kind = "TorchScript (frozen)" if isinstance(module, torch.jit.ScriptModule) else "eager"
    memory_format = torch.channels_last if variant.channels_last else torch.contiguous_format
    side = loaded.preprocess.input_size
    rows: list[Row] = []
    failed: str | None = None
    for size in sizes:
        if failed is not None:
            rows.append(_error_row(variant, size, failed))
            continue
        progress(f"{variant.name}: batch size {size} ...")
        try:
            inputs = torch.randn(size, 3, side, side, device=device).contiguous(memory_format=memory_format)
            samples = _time_forward(module, inputs, dtype, repeats, warmup)
        except torch.cuda.OutOfMemoryError:
            failed = "out of memory"
            rows.append(_error_row(variant, size, failed))
            torch.cuda.empty_cache()
            continue
        timing = summarise(samples, per=size)
        rows.append(Row(variant=variant.name, batch_size=size, median_ms=timing["median_ms"],
                        min_ms=timing["min_ms"], max_ms=timing["max_ms"],
                        images_per_s=timing["images_per_s"], error=None))
        del inputs
    del module, loaded
    if getattr(device, "type", None) == "cuda":
        torch.cuda.empty_cache()
    return kind, rows


def render_markdown(report: GpuReport) -> str:
    """The report as a markdown section: command, machine, one table (sizes x variants)."""
    machine = report["machine"]
    variants = list(report["modules"])
    cells = {(row["variant"], row["batch_size"]): row for row in report["rows"]}
    sizes = sorted({row["batch_size"] for row in report["rows"]})
    lines = [
        f"### GPU model benchmark: {report['model']} on {machine['device']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['device']}, {machine.get('gpu_memory_gib', '?')} GiB; CUDA "
        f"{machine.get('cuda')}, cuDNN {machine.get('cudnn')}, torch {machine['torch']}, Python "
        f"{machine['python']}; host CPU {machine['cpu']}, {machine['cores']} cores. "
        f"Weights: {report['weights']}. cudnn.benchmark: {'on' if report['cudnn_benchmark'] else 'off'}.",
        "",
        "Module per variant: " + "; ".join(f"{name}: {kind}" for name, kind in report["modules"].items())
        + ".",
        "",
        "| Batch size | " + " | ".join(f"{name} ms | {name} images/s" for name in variants) + " |",
        "|---:|" + "---:|---:|" * len(variants),
    ]
    for size in sizes:
        row_cells = []
        for name in variants:
            row = cells.get((name, size))
            if row is None or row["median_ms"] is None or row["images_per_s"] is None:
                row_cells += [row["error"] if row and row["error"] else "n/a", ""]
            else:
                row_cells += [f"{row['median_ms']:.2f}", f"{row['images_per_s']:.0f}"]
        lines.append(f"| {size} | " + " | ".join(row_cells) + " |")
    lines += [
        "",
        f"ms = median of {report['repeats']} timed forward passes (after {report['warmup']} warm-up "
        "passes) on a batch already on the GPU, each followed by a device synchronise: the model "
        "alone, no decode, no copy, no softmax. fp16/bf16 = `torch.autocast` (`AUTOCAST`), "
        "-cl = channels-last (`CHANNELS_LAST=true`).",
    ]
    return "\n".join(lines)


def _time_forward(module: Any, inputs: Any, dtype: Any, repeats: int, warmup: int) -> list[float]:
    import contextlib

    import torch

    device = inputs.device
    cuda = device.type == "cuda"

    def run() -> None:
        with torch.inference_mode(), (
                torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()):
            module(inputs)
        if cuda:
            torch.cuda.synchronize(device)

    return time_each(run, repeats, warmup)


def _error_row(variant: Variant, size: int, error: str) -> Row:
    return Row(variant=variant.name, batch_size=size, median_ms=None, min_ms=None, max_ms=None,
               images_per_s=None, error=error)


def _variants(value: str) -> list[Variant]:
    names = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"--variants takes names from {', '.join(VARIANTS)}; got {value!r}")
    return [VARIANTS[name] for name in dict.fromkeys(names)]


if __name__ == "__main__":
    sys.exit(main())
