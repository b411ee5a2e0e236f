"""Forward-pass time per batch size, and preprocessing time per image, on real photos.

    python -m loadtest.model_benchmark --sizes 1,2,4,8,16 --repeats 20 --markdown docs/benchmarks.md

Times the model alone (the handler's ``predict`` on an already-stacked batch: the model and its
softmax) per batch size after warm-up runs: median with min-max, per-image time, images/s and
the seed guide's efficiency ``(T_individual x size) / T_batch``, T_individual the median at size
1. It also times decoding + preprocessing from JPEG bytes, which every request pays whatever the
mode. Progress goes to stderr; the table to stdout, ``--json`` and ``--markdown``. torch is
imported only when it runs, so ``--help`` and the report readers stay light.
"""
from __future__ import annotations

import argparse
import functools
import io
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from common.repository import BUILT_IN_DEFAULT

from .markdown import replace_section

__all__ = ["BenchmarkReport", "ForwardTiming", "Timing", "batch_sizes", "count", "machine_info", "main",
           "progress", "publish", "render_markdown", "summarise"]

#: skimage photos used as inputs (cycled to fill larger batches).
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
DEFAULT_SIZES = "1,2,4,8,16"


class Timing(TypedDict):
    """Timed runs of one workload of ``per`` images (milliseconds)."""

    per: int
    median_ms: float
    min_ms: float
    max_ms: float
    per_image_ms: float
    images_per_s: float
    samples_ms: list[float]


class ForwardTiming(Timing):
    """One batch size's forward pass; efficiency is the seed guide's formula (None without size 1)."""

    batch_size: int
    efficiency: float | None


class BenchmarkReport(TypedDict):
    """What ``--json`` writes (the load tests read it as the model-only ceiling)."""

    command: str
    machine: dict[str, Any]
    model: str
    weights: str
    repeats: int
    warmup: int
    photos: list[str]
    preprocess: Timing
    forward: list[ForwardTiming]


def batch_sizes(value: str) -> list[int]:
    """``"4,1,2"`` -> ``[1, 2, 4]`` (argparse type)."""
    try:
        sizes = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"--sizes takes positive integers, e.g. 1,2,4; got {value!r}")
    return sizes


def count(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``low``."""
    def parse(value: str) -> int:
        if int(value) < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        return int(value)
    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.model_benchmark",
                                     description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--model", default=BUILT_IN_DEFAULT, help="model name; 'null' and 'simulated' are stand-ins that "
        "measure everything but the model (default: %(default)s)")
    add("--weights", default=None, help="state dict path, or 'random' (default: the model's own)")
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    add("--sizes", type=batch_sizes, default=batch_sizes(DEFAULT_SIZES),
        help="comma-separated batch sizes (default: %(default)s)")
    add("--repeats", type=count(1), default=20, help="timed runs per batch size (default: %(default)s)")
    add("--warmup", type=count(0), default=3, help="untimed runs first, per size (default: %(default)s)")
    add("--threads", type=count(1), default=None, help="torch intra-op threads (default: torch's choice)")
    add("--json", type=Path, help="write the raw numbers here")
    add("--jit", action=argparse.BooleanOptionalAction, default=True,
        help="trace and freeze the model as the workers do (default: %(default)s)")
    add("--section", default=None, help="the marked section to replace (default model-benchmark-MODEL)")
    add("--markdown", type=Path, help="replace the section between <!-- BEGIN/END SECTION --> in this file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    import torch

    from workers.handler import ImageClassifier

    if args.threads:
        torch.set_num_threads(args.threads)
    handler = ImageClassifier(args.model, args.weights, args.device, jit=args.jit)
    progress(f"loading {args.model} ...")
    handler.setup()
    jpegs = _sample_jpegs()
    progress(f"timing preprocessing of {len(jpegs)} JPEGs ...")
    preprocess = summarise(time_each(lambda: [handler.preprocess(j) for j in jpegs], args.repeats,
                                     args.warmup), per=len(jpegs))
    inputs = [handler.preprocess(j) for j in jpegs]
    forward: list[ForwardTiming] = []
    for size in args.sizes:
        progress(f"timing batch size {size} ...")
        batch = handler.batch([inputs[i % len(inputs)] for i in range(size)])
        # predict() copies the probabilities to the CPU, so CUDA timings include the kernels.
        samples = time_each(functools.partial(handler.predict, batch), args.repeats, args.warmup)
        forward.append(ForwardTiming(batch_size=size, efficiency=None, **summarise(samples, per=size)))
    single = next((row["median_ms"] for row in forward if row["batch_size"] == 1), None)
    for row in forward:
        row["efficiency"] = None if single is None else single * row["batch_size"] / row["median_ms"]
    report = BenchmarkReport(command="python -m loadtest.model_benchmark " + shlex.join(argv),
                             machine=machine_info(handler.device), model=args.model,
                             weights=handler.loaded.weights, repeats=args.repeats, warmup=args.warmup,
                             photos=list(PHOTOS), preprocess=preprocess, forward=forward)
    publish(report, render_markdown(report), args.json, args.markdown,
            args.section or f"model-benchmark-{args.model}")
    return 0


def publish(report: Mapping[str, Any], text: str, json_path: Path | None, markdown: Path | None,
            section: str) -> None:
    """Print ``text``; write ``report`` as JSON and ``text`` into ``markdown``'s ``section`` when given."""
    print(text)
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        progress(f"wrote {json_path}")
    if markdown:
        replace_section(markdown, section, text)
        progress(f"updated {markdown}")


def render_markdown(report: BenchmarkReport) -> str:
    """The report as a markdown section: command, machine, preprocessing, forward table."""
    machine, pre = report["machine"], report["preprocess"]
    lines = [
        f"### Model benchmark: {report['model']} on {machine['device']}", "",
        f"Command: `{report['command']}`", "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"torch {machine['torch']}, {machine['threads']} torch threads, Python {machine['python']}. "
        f"Weights: {report['weights']}.", "",
        f"Preprocessing (JPEG bytes -> normalised tensor; photos: {', '.join(report['photos'])}): "
        f"median {pre['per_image_ms']:.2f} ms per image "
        f"(min-max {pre['min_ms'] / pre['per']:.2f}-{pre['max_ms'] / pre['per']:.2f}).", "",
        "| Batch size | Forward median ms (min-max) | ms per image | images/s | Efficiency |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in report["forward"]:
        efficiency = "n/a" if row["efficiency"] is None else f"{row['efficiency']:.2f}x"
        lines.append(f"| {row['batch_size']} | {row['median_ms']:.1f} ({row['min_ms']:.1f}-"
                     f"{row['max_ms']:.1f}) | {row['per_image_ms']:.1f} | {row['images_per_s']:.1f} "
                     f"| {efficiency} |")
    return "\n".join(lines + [
        "", "Efficiency = (T_individual x batch size) / T_batch, T_individual = the median at batch "
        f"size 1 (the seed guide's formula). {report['repeats']} timed runs per size after "
        f"{report['warmup']} warm-up runs; forward = model + softmax on an already-stacked batch."])


def _sample_jpegs() -> list[bytes]:
    import skimage.data
    from PIL import Image

    jpegs = []
    for name in PHOTOS:
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return jpegs


def time_each(run: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``run``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summarise(samples_ms: list[float], per: int) -> Timing:
    """Median, min and max of timed runs of ``per`` images each, and the rates they imply."""
    median = statistics.median(samples_ms)
    return Timing(per=per, median_ms=median, min_ms=min(samples_ms), max_ms=max(samples_ms),
                  per_image_ms=median / per, images_per_s=per * 1000 / median, samples_ms=samples_ms)


def machine_info(device: Any) -> dict[str, Any]:
    """CPU, cores, torch version and threads, Python, and the device (with a GPU's name)."""
    import torch

    from .markdown import cpu_model

    name = str(device)
    if getattr(device, "type", None) == "cuda":
        name = f"{device} ({torch.cuda.get_device_name(device)})"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(), "device": name}


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
