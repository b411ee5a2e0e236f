"""Forward-pass time per batch size, and preprocessing time per image, on real photos.

    python -m workers.benchmark --sizes 1,2,4,8,16 --repeats 20 --markdown README.md

Times the model alone (the handler's ``predict`` on an already-stacked batch: the model
and its softmax) for each batch size, dropping warm-up runs, and reports the median
with min-max, per-image time, images/s, and the seed guide's efficiency
``(T_individual x size) / T_batch`` with T_individual the median at size 1. It also
times decoding + preprocessing from JPEG bytes, which each request pays once whatever
the mode. Progress goes to stderr; the table to stdout, ``--json`` and ``--markdown``.
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

__all__ = [
    "publish",
    "batch_sizes",
    "non_negative_int",
    "positive_int",
    "progress",
    "BEGIN_MARK",
    "BenchmarkReport",
    "ForwardTiming",
    "Timing",
    "END_MARK",
    "machine_info",
    "main",
    "render_markdown",
    "replace_section",
    "summarise",
    "write_markdown_section",
]

#: The markdown file's section between these markers is replaced by each run.
BEGIN_MARK = "<!-- BEGIN model-benchmark -->"
END_MARK = "<!-- END model-benchmark -->"
#: Default model (imported from common, so --help stays torch-free).
DEFAULT_MODEL = BUILT_IN_DEFAULT
#: skimage photos used as inputs (cycled to fill larger batches).
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
DEFAULT_SIZES = "1,2,4,8,16"
DEFAULT_REPEATS = 20
DEFAULT_WARMUP = 3


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
    """What ``--json`` writes (the load-test driver reads it as the model-only ceiling)."""

    command: str
    machine: dict[str, Any]
    model: str
    weights: str
    repeats: int
    warmup: int
    photos: list[str]
    preprocess: Timing
    forward: list[ForwardTiming]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers.benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help="model name; 'null' and 'simulated' are benchmark stand-ins that measure "
                             "everything but the model (default: %(default)s)")
    parser.add_argument("--weights", default=None,
                        help="state dict path, or 'random' (default: the model's own)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--sizes", type=batch_sizes, default=batch_sizes(DEFAULT_SIZES),
                        help="comma-separated batch sizes (default: %(default)s)")
    parser.add_argument("--repeats", type=positive_int, default=DEFAULT_REPEATS,
                        help="timed runs per batch size (default: %(default)s)")
    parser.add_argument("--warmup", type=non_negative_int, default=DEFAULT_WARMUP,
                        help="untimed runs first, per batch size (default: %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch intra-op threads (default: torch's own choice)")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=True,
                        help="trace and freeze the model as the workers do (default: %(default)s)")
    parser.add_argument("--section", default=None,
                        help="name of the marked section to replace (default model-benchmark-MODEL)")
    parser.add_argument("--markdown", type=Path,
                        help=f"replace the section between {BEGIN_MARK} and {END_MARK} in this file")
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
    preprocess = summarise(_time_each(lambda: [handler.preprocess(j) for j in jpegs],
                                       args.repeats, args.warmup), per=len(jpegs))
    inputs = [handler.preprocess(j) for j in jpegs]
    forward: list[ForwardTiming] = []
    for size in args.sizes:
        progress(f"timing batch size {size} ...")
        batch = handler.batch([inputs[i % len(inputs)] for i in range(size)])
        # predict() copies the probabilities to the CPU, so CUDA timings include the kernels.
        samples = _time_each(functools.partial(handler.predict, batch), args.repeats, args.warmup)
        forward.append(ForwardTiming(batch_size=size, efficiency=None, **summarise(samples, per=size)))
    _add_efficiency(forward)
    report: BenchmarkReport = {
        "command": "python -m workers.benchmark " + shlex.join(argv),
        "machine": machine_info(handler.device),
        "model": args.model,
        "weights": handler.loaded.weights,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "photos": list(PHOTOS),
        "preprocess": preprocess,
        "forward": forward,
    }
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
        write_markdown_section(markdown, text, section)
        progress(f"updated {markdown}")


def render_markdown(report: BenchmarkReport) -> str:
    """The report as a markdown section: command, machine, preprocessing, forward table."""
    machine, pre = report["machine"], report["preprocess"]
    lines = [
        f"### Model benchmark: {report['model']} on {machine['device']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), "
        f"torch {machine['torch']}, {machine['threads']} torch threads, Python {machine['python']}. "
        f"Weights: {report['weights']}.",
        "",
        f"Preprocessing (JPEG bytes -> normalised tensor; photos: {', '.join(report['photos'])}): "
        f"median {pre['per_image_ms']:.2f} ms per image "
        f"(min-max {pre['min_ms'] / pre['per']:.2f}-{pre['max_ms'] / pre['per']:.2f}).",
        "",
        "| Batch size | Forward median ms (min-max) | ms per image | images/s | Efficiency |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in report["forward"]:
        efficiency = "n/a" if row["efficiency"] is None else f"{row['efficiency']:.2f}x"
        lines.append(
            f"| {row['batch_size']} | {row['median_ms']:.1f} ({row['min_ms']:.1f}-{row['max_ms']:.1f}) "
            f"| {row['per_image_ms']:.1f} | {row['images_per_s']:.1f} | {efficiency} |"
        )
    lines += [
        "",
        "Efficiency = (T_individual x batch size) / T_batch, T_individual = the median at batch "
        f"size 1 (the seed guide's formula). {report['repeats']} timed runs per size after "
        f"{report['warmup']} warm-up runs; forward = model + softmax on an already-stacked batch.",
    ]
    return "\n".join(lines)


def replace_section(text: str, body: str, section: str = "model-benchmark") -> str:
    """``text`` with the part between ``section``'s markers replaced by ``body`` (appended if absent)."""
    begin_mark, end_mark = f"<!-- BEGIN {section} -->", f"<!-- END {section} -->"
    block = f"{begin_mark}\n{body.strip()}\n{end_mark}"
    begin, end = text.find(begin_mark), text.find(end_mark)
    if begin == -1 and end == -1:
        separator = "" if not text else ("\n" if text.endswith("\n") else "\n\n")
        return f"{text}{separator}{block}\n"
    if begin == -1 or end < begin:
        raise ValueError(f"unbalanced benchmark markers: need {begin_mark} before {end_mark}")
    return text[:begin] + block + text[end + len(end_mark):]


def write_markdown_section(path: Path, body: str, section: str = "model-benchmark") -> None:
    """Replace the benchmark section of ``path`` (creating the file or section if absent)."""
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    path.write_text(replace_section(text, body, section))


def _sample_jpegs() -> list[bytes]:
    import skimage.data
    from PIL import Image

    jpegs = []
    for name in PHOTOS:
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return jpegs


def _time_each(run: Callable[[], object], repeats: int, warmup: int) -> list[float]:
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


def _add_efficiency(rows: list[ForwardTiming]) -> None:
    single = next((row["median_ms"] for row in rows if row["batch_size"] == 1), None)
    for row in rows:
        row["efficiency"] = None if single is None else single * row["batch_size"] / row["median_ms"]


def machine_info(device: Any) -> dict[str, Any]:
    """CPU, cores, torch version and threads, Python, and the device (with a GPU's name)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    name = str(device)
    if getattr(device, "type", None) == "cuda":
        name = f"{device} ({torch.cuda.get_device_name(device)})"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": name,
    }


def batch_sizes(value: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--sizes takes comma-separated integers, e.g. 1,2,4; got {value!r}"
        ) from exc
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"--sizes must be positive integers, e.g. 1,2,4; got {value!r}")
    return sizes


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return number


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return number


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
