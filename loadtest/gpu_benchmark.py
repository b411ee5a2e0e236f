"""Model-only forward-pass time on a CUDA GPU, per batch size and numeric variant.

Without CUDA it says so, writes nothing and exits with 2: CPU numbers are never published as GPU ones.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .model_benchmark import machine_info, parser, progress, publish, summarise, time_each

EXIT_NO_CUDA = 2
SECTION = "gpu-benchmark"
DEFAULT_VARIANTS = "fp32,fp32-cl,fp16,fp16-cl"


class Variant(NamedTuple):
    """How the forward pass runs: a ``workers.accel.DTYPES`` precision, and the memory format."""
    name: str
    precision: str
    channels_last: bool


VARIANTS = {v.name: v for v in (Variant(f"{p}{cl}", p, bool(cl)) for p in ("fp32", "fp16", "bf16")
                                for cl in ("", "-cl"))}


def _variants(value: str) -> list[Variant]:
    names = [part.strip() for part in value.split(",") if part.strip()]
    if not names or set(names) - set(VARIANTS):
        raise argparse.ArgumentTypeError(f"--variants takes names from {', '.join(VARIANTS)}; got {value!r}")
    return [VARIANTS[name] for name in dict.fromkeys(names)]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    out = parser("loadtest.gpu_benchmark", __doc__ or "", model="resnet50", weights="random", device="cuda",
                 sizes="1,2,4,8,16,32,64,128,256", warmup=5, min_warmup=1)
    out.add_argument("--variants", type=_variants, default=_variants(DEFAULT_VARIANTS),
                     help=f"comma-separated, of {', '.join(VARIANTS)} (default: {DEFAULT_VARIANTS})")
    out.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                     help="torch.backends.cudnn.benchmark (default: %(default)s)")
    out.add_argument("--output", type=Path, default=Path("docs/benchmarks-gpu.md"),
                     help=f"markdown file whose {SECTION} section is replaced (default: %(default)s)")
    return out.parse_args(argv)


def measure(model: str, weights: str | None, device: Any, variant: Variant, sizes: Sequence[int],
            repeats: int, warmup: int, *, jit: bool = True) -> tuple[str, list[dict[str, Any]]]:
    """The kind of module that ran and a row per size; from the first size out of memory on, error rows."""
    import torch

    from workers.accel import DTYPES
    from workers.model import load_model

    dtype = DTYPES[variant.precision]
    loaded = load_model(model, weights, device, jit=jit, channels_last=variant.channels_last, autocast=dtype)
    kind = "TorchScript (frozen)" if isinstance(loaded.module, torch.jit.ScriptModule) else "eager"
    memory_format = torch.channels_last if variant.channels_last else torch.contiguous_format
    side, rows, failed = loaded.preprocess.input_size, [], None

    def forward(inputs: Any) -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loaded.module(inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    for size in sizes:
        if failed is None:
            progress(f"{variant.name}: batch size {size} ...")
            try:
                inputs = torch.randn(size, 3, side, side, device=device).contiguous(
                    memory_format=memory_format)
                samples = time_each(lambda: forward(inputs), repeats, warmup)  # noqa: B023
                rows.append({"variant": variant.name, "batch_size": size, "error": None,
                             **summarise(samples, size)})
                del inputs
                continue
            except torch.cuda.OutOfMemoryError:
                failed = "out of memory"
                torch.cuda.empty_cache()
        rows.append({"variant": variant.name, "batch_size": size, "error": failed})
    return kind, rows


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    import torch

    from workers.model import resolve_device

    if not torch.cuda.is_available() or resolve_device(args.device).type != "cuda":
        print(f"loadtest.gpu_benchmark: CUDA is not available to --device {args.device} (torch "
              f"{torch.__version__}, CUDA {torch.version.cuda or 'none'}); run it on a machine with an "
              "NVIDIA GPU. Nothing was written.", file=sys.stderr)
        return EXIT_NO_CUDA
    device = resolve_device(args.device)
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    modules, rows = {}, []
    for variant in args.variants:
        progress(f"{variant.name}: loading {args.model} ...")
        modules[variant.name], found = measure(args.model, args.weights or None, device, variant, args.sizes,
                                               args.repeats, args.warmup, jit=args.jit)
        rows += found
        torch.cuda.empty_cache()  # the variant's model is gone
    machine = {**machine_info(device), "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
               "gpu_memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)}
    report = {"command": "python -m loadtest.gpu_benchmark " + shlex.join(argv), "machine": machine,
              "model": args.model, "weights": args.weights or "the model's own", "jit": args.jit,
              "cudnn_benchmark": args.cudnn_benchmark, "repeats": args.repeats, "warmup": args.warmup,
              "modules": modules, "rows": rows}
    publish(report, render_markdown(report), args.json, args.output, SECTION)
    return 0


def render_markdown(report: dict[str, Any]) -> str:
    machine, variants = report["machine"], list(report["modules"])
    cells = {(row["variant"], row["batch_size"]): row for row in report["rows"]}
    lines = [
        f"### GPU model benchmark: {report['model']} on {machine['device']}", "",
        f"Command: `{report['command']}`", "",
        f"Machine: {machine['device']}, {machine.get('gpu_memory_gib', '?')} GiB; CUDA "
        f"{machine.get('cuda')}, cuDNN {machine.get('cudnn')}, torch {machine['torch']}, Python "
        f"{machine['python']}; host CPU {machine['cpu']}, {machine['cores']} cores. Weights: "
        f"{report['weights']}. cudnn.benchmark: {'on' if report['cudnn_benchmark'] else 'off'}.", "",
        "Module per variant: " + "; ".join(f"{n}: {kind}" for n, kind in report["modules"].items()) + ".", "",
        "| Batch size | " + " | ".join(f"{name} ms | {name} images/s" for name in variants) + " |",
        "|---:|" + "---:|---:|" * len(variants)]
    for size in sorted({row["batch_size"] for row in report["rows"]}):
        row_cells = []
        for name in variants:
            row = cells.get((name, size))
            if row is not None and row.get("median_ms") is not None:
                row_cells += [f"{row['median_ms']:.2f}", f"{row['images_per_s']:.0f}"]
            else:
                row_cells += [(row or {}).get("error") or "n/a", ""]
        lines.append(f"| {size} | " + " | ".join(row_cells) + " |")
    return "\n".join(lines + [
        "", f"ms = median of {report['repeats']} timed forward passes (after {report['warmup']} warm-up "
        "passes) on a batch already on the GPU, each followed by a device synchronise: the model alone, no "
        "decode, no copy, no softmax. fp16/bf16 = `torch.autocast` (`PRECISION`), -cl = channels-last."])


if __name__ == "__main__":
    sys.exit(main())
