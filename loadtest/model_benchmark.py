"""Forward-pass time per batch size, the model alone, so the load tests can tell what the pipeline costs.

The worker's own handler on real photos, preprocessing timed apart (every request pays it); or, with
``--gpu-variants``, CUDA per precision and memory format (without CUDA: exit 2, nothing written).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import timeit
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from common.repository import BUILT_IN_DEFAULT

from .make_corpus import PhotoSpec, encode
from .report import cpu_model, replace_section, table

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
EXIT_NO_CUDA = 2
GPU_SECTION = "gpu-benchmark"
#: A GPU variant -> its ``workers.accel.DTYPES`` precision, and whether channels-last.
VARIANTS = {f"{p}{cl}": (p, bool(cl)) for p in ("fp32", "fp16", "bf16") for cl in ("", "-cl")}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    cli = argparse.ArgumentParser(prog="python -m loadtest.model_benchmark",
                                  description=(__doc__ or "").splitlines()[0])
    add = cli.add_argument
    add("--model", default=BUILT_IN_DEFAULT, help="model name (default: %(default)s)")
    add("--weights", help="state dict path, 'random', or '' for the model's own")
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    add("--sizes", type=lambda v: sorted({int(size) for size in v.split(",")}), default=[1, 2, 4, 8, 16],
        help="batch sizes, e.g. 1,2,4 (default: 1,2,4,8,16)")
    add("--repeats", type=int, default=20, help="timed runs per batch size (default: %(default)s)")
    add("--warmup", type=int, default=3, help="untimed runs first, 1 or more on the GPU (%(default)s)")
    add("--jit", action=argparse.BooleanOptionalAction, default=True, help="freeze, as the workers do")
    add("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    add("--gpu-variants", type=lambda v: list(dict.fromkeys(v.split(","))),
        help=f"time these on CUDA instead: some of {', '.join(VARIANTS)}")
    add("--json", type=Path, help="also write the raw numbers here")
    add("--markdown", type=Path, help="replace --section in this file")
    add("--section", help=f"default: model-benchmark-MODEL, or {GPU_SECTION} with --gpu-variants")
    args = cli.parse_args(argv)
    if min(args.sizes) < 1 or set(args.gpu_variants or ()) - set(VARIANTS):
        cli.error("--sizes takes positive integers, --gpu-variants names of the variants listed")
    if args.repeats < 1 or args.warmup < bool(args.gpu_variants):  # torch refuses --threads below 1
        cli.error("--repeats takes 1 or more, --warmup 0 or more (1 or more on the GPU)")
    return args


def timed(run: Callable[[], object], per: int, args: argparse.Namespace) -> dict[str, Any]:
    """``args.repeats`` runs after ``args.warmup`` untimed ones (timeit: no garbage collection meanwhile)."""
    runs = timeit.repeat(run, repeat=args.warmup + args.repeats, number=1)
    samples_ms = [seconds * 1000 for seconds in runs[args.warmup:]]
    median = statistics.median(samples_ms)
    return {"per": per, "median_ms": median, "min_ms": min(samples_ms), "max_ms": max(samples_ms),
            "per_image_ms": median / per, "images_per_s": per * 1000 / median, "samples_ms": samples_ms}


def forward_rows(args: argparse.Namespace, prepare: Callable[[int], Callable[[], object]],
                 label: str = "") -> list[dict[str, Any]]:
    """A row per size of ``prepare(size)`` timed; from the first size out of memory on, error rows."""
    import torch

    rows: list[dict[str, Any]] = []
    failed = None  # the error of this size and every larger one
    for size in args.sizes:
        rows.append(row := {"batch_size": size, "error": failed})
        if failed is None:
            print(f"{label}timing batch size {size} ...", file=sys.stderr, flush=True)
            try:
                row.update(timed(prepare(size), size, args))
            except torch.cuda.OutOfMemoryError:
                row["error"] = failed = "out of memory"
                torch.cuda.empty_cache()
    single = rows[0]["median_ms"] if rows[0]["batch_size"] == 1 and not rows[0]["error"] else None  # sorted
    for row in rows:
        if not row["error"]:
            row["efficiency"] = None if single is None else single * row["batch_size"] / row["median_ms"]
    return rows


def machine_info(device: Any) -> dict[str, Any]:
    import torch

    name = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    info: dict[str, Any] = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
        "device": name}
    if device.type == "cuda":
        info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    gpu_memory_gib=round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1))
    return info


def cpu_report(args: argparse.Namespace, device: Any) -> dict[str, Any]:
    from workers.handler import ImageClassifier

    handler = ImageClassifier(args.model, args.weights or None, device, jit=args.jit)
    handler.setup()
    jpegs = [encode(PhotoSpec(f"{name}.jpg", name))[0] for name in PHOTOS]  # as they are, quality 90
    preprocess = timed(lambda: [handler.preprocess(j) for j in jpegs], len(jpegs), args)
    inputs = [handler.preprocess(j) for j in jpegs]

    def prepare(size: int) -> Callable[[], object]:
        batch = handler.batch([inputs[i % len(inputs)] for i in range(size)])
        # predict() copies the probabilities to the CPU, so CUDA timings include the kernels.
        return lambda: handler.predict(batch)
    return {"weights": handler.loaded.weights, "photos": list(PHOTOS), "preprocess": preprocess,
            "forward": forward_rows(args, prepare)}


def measure(args: argparse.Namespace, device: Any, variant: str) -> list[dict[str, Any]]:
    """``variant``'s rows: random batches already on ``device``, no softmax; a row says which module ran."""
    import torch

    from workers.accel import DTYPES
    from workers.model import load_model

    torch.cuda.empty_cache()  # the last variant's model is gone
    torch.backends.cudnn.benchmark = True  # fixed shapes: the autotuner runs in the warm-up
    precision, channels_last = VARIANTS[variant]
    dtype = DTYPES[precision]
    loaded = load_model(args.model, args.weights or None, device, jit=args.jit, channels_last=channels_last,
                        autocast=dtype)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    side = loaded.preprocess.input_size

    def prepare(size: int) -> Callable[[], object]:
        inputs = torch.randn(size, 3, side, side, device=device).contiguous(memory_format=memory_format)

        def forward() -> None:
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loaded.module(inputs)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        return forward
    module = "TorchScript (frozen)" if isinstance(loaded.module, torch.jit.ScriptModule) else "eager"
    return [{"variant": variant, "module": module, **r} for r in forward_rows(args, prepare, f"{variant}: ")]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    import torch

    from workers.model import resolve_device

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    gpu = args.gpu_variants
    device = resolve_device("cpu" if gpu and not torch.cuda.is_available() else args.device)
    if gpu and device.type != "cuda":
        print(f"loadtest.model_benchmark: CUDA is not available to --device {args.device} (torch "
              f"{torch.__version__}, CUDA {torch.version.cuda or 'none'}); nothing written", file=sys.stderr)
        return EXIT_NO_CUDA
    if gpu:
        found = {"weights": args.weights or "the model's own", "jit": args.jit,
                 "rows": [row for variant in gpu for row in measure(args, device, variant)]}
    else:
        found = cpu_report(args, device)
    report = {"command": "python -m loadtest.model_benchmark " + shlex.join(argv),
              "machine": machine_info(device), "model": args.model, "repeats": args.repeats,
              "warmup": args.warmup, **found}
    print(text := render_markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        default = GPU_SECTION if gpu else f"model-benchmark-{args.model}"
        replace_section(args.markdown, args.section or default, text)
    return 0


def render_markdown(report: Mapping[str, Any]) -> str:
    """The CPU report (``forward``) or the GPU one (``rows``, a ``variant`` each; 2 decimals)."""
    m, gpu = report["machine"], "rows" in report
    if gpu:
        rows, digits = report["rows"], 2
        extra = f"; GPU memory {m['gpu_memory_gib']} GiB, CUDA {m['cuda']}, cuDNN {m['cudnn']}"
        modules = dict.fromkeys(f"{r['variant']}: {r['module']}" for r in rows)
        about = "Module per variant: " + "; ".join(modules)
        what = ("forward = the model alone on a batch already on the GPU, then a device synchronise (no "
                "decode, copy or softmax; cudnn.benchmark on); fp16/bf16 = `torch.autocast` (`PRECISION`), "
                "-cl = channels-last")
    else:
        rows, digits, extra, pre = report["forward"], 1, "", report["preprocess"]
        about = (f"Preprocessing (JPEG bytes -> normalised tensor; photos: {', '.join(report['photos'])}): "
                 f"median {pre['per_image_ms']:.2f} ms per image (min-max {pre['min_ms'] / pre['per']:.2f}-"
                 f"{pre['max_ms'] / pre['per']:.2f})")
        what = "forward = model + softmax on an already-stacked batch"

    def cells(row: Mapping[str, Any]) -> list[str]:
        first = [row["variant"], str(row["batch_size"])] if gpu else [str(row["batch_size"])]
        if row["error"]:
            return [*first, row["error"], "", "", ""]
        low, mid, high = (f"{row[k]:.{digits}f}" for k in ("min_ms", "median_ms", "max_ms"))
        efficiency = "n/a" if row["efficiency"] is None else f"{row['efficiency']:.2f}x"
        return [*first, f"{mid} ({low}-{high})", f"{row['per_image_ms']:.{digits}f}",
                f"{row['images_per_s']:.1f}", efficiency]
    header = ["Batch size", "Forward median ms (min-max)", "ms per image", "images/s", "Efficiency"]
    return "\n".join([
        f"### {'GPU model' if gpu else 'Model'} benchmark: {report['model']} on {m['device']}", "",
        f"Command: `{report['command']}`", "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), torch {m['torch']}, "
        f"{m['threads']} torch threads, Python {m['python']}{extra}. Weights: {report['weights']}.", "",
        f"{about}.", "",
        table(["Variant", *header] if gpu else header, [cells(row) for row in rows], "---:"), "",
        "Efficiency = (T_individual x batch size) / T_batch, T_individual = the median at batch size 1 (the "
        f"seed guide's formula). {report['repeats']} timed runs per size after {report['warmup']} warm-up "
        f"runs; {what}."])


if __name__ == "__main__":
    sys.exit(main())
