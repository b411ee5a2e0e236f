"""Forward-pass time per batch size, and preprocessing time per image, on real photos.

The model alone, so the load tests can tell what the pipeline costs on top of it; preprocessing apart,
since every request pays it in either mode. torch is imported only when it runs (light ``--help``).
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
from typing import Any

from common.repository import BUILT_IN_DEFAULT

from .report import cpu_model, replace_section, table

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")


def _sizes(value: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"--sizes takes positive integers, e.g. 1,2,4; got {value!r}")
    return sizes


def _at_least(low: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if int(value) < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        return int(value)
    return parse


def parser(prog: str, doc: str, *, model: str, weights: str | None, device: str, sizes: str, warmup: int,
           min_warmup: int) -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc.splitlines()[0])
    add = out.add_argument
    add("--model", default=model, help="model name (default: %(default)s)")
    add("--weights", default=weights, help="state dict path, 'random', or '' for the model's own")
    add("--device", default=device, help="cpu, cuda or cuda:N (default: %(default)s)")
    add("--sizes", type=_sizes, default=_sizes(sizes), help="batch sizes (default: %(default)s)")
    add("--repeats", type=_at_least(1), default=20, help="timed runs per batch size (default: %(default)s)")
    add("--warmup", type=_at_least(min_warmup), default=warmup, help="untimed runs first (%(default)s)")
    add("--jit", action=argparse.BooleanOptionalAction, default=True, help="freeze, as the workers do")
    add("--json", type=Path, help="also write the raw numbers here")
    return out


def time_each(run: Callable[[], object], repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summarise(samples_ms: list[float], per: int) -> dict[str, Any]:
    median = statistics.median(samples_ms)
    return {"per": per, "median_ms": median, "min_ms": min(samples_ms), "max_ms": max(samples_ms),
            "per_image_ms": median / per, "images_per_s": per * 1000 / median, "samples_ms": samples_ms}


def machine_info(device: Any) -> dict[str, Any]:
    import torch

    name = f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else str(device)
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "device": name}


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def publish(report: Mapping[str, Any], text: str, json_path: Path | None, markdown: Path | None,
            section: str) -> None:
    print(text)
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    if markdown:
        replace_section(markdown, section, text)
        progress(f"updated {markdown}")


def _sample_jpegs() -> list[bytes]:
    import skimage.data
    from PIL import Image

    jpegs = []
    for name in PHOTOS:
        buffer = io.BytesIO()
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(buffer, "JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    return jpegs


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cli = parser("loadtest.model_benchmark", __doc__ or "", model=BUILT_IN_DEFAULT, weights=None,
                 device="auto", sizes="1,2,4,8,16", warmup=3, min_warmup=0)
    cli.add_argument("--threads", type=_at_least(1), help="torch intra-op threads (default: torch's choice)")
    cli.add_argument("--section", help="the section to replace (default model-benchmark-MODEL)")
    cli.add_argument("--markdown", type=Path, help="replace --section in this file")
    args = cli.parse_args(argv)
    import torch

    from workers.handler import ImageClassifier

    if args.threads:
        torch.set_num_threads(args.threads)
    handler = ImageClassifier(args.model, args.weights or None, args.device, jit=args.jit)
    progress(f"loading {args.model} ...")
    handler.setup()
    jpegs = _sample_jpegs()
    preprocess = summarise(time_each(lambda: [handler.preprocess(j) for j in jpegs], args.repeats,
                                     args.warmup), per=len(jpegs))
    inputs = [handler.preprocess(j) for j in jpegs]
    forward = []
    for size in args.sizes:
        progress(f"timing batch size {size} ...")
        batch = handler.batch([inputs[i % len(inputs)] for i in range(size)])
        # predict() copies the probabilities to the CPU, so CUDA timings include the kernels.
        forward.append({"batch_size": size, **summarise(time_each(functools.partial(handler.predict, batch),
                                                                  args.repeats, args.warmup), per=size)})
    single = next((row["median_ms"] for row in forward if row["batch_size"] == 1), None)
    for row in forward:
        row["efficiency"] = None if single is None else single * row["batch_size"] / row["median_ms"]
    report = {"command": "python -m loadtest.model_benchmark " + shlex.join(argv),
              "machine": machine_info(handler.device), "model": args.model, "weights": handler.loaded.weights,
              "repeats": args.repeats, "warmup": args.warmup, "photos": list(PHOTOS),
              "preprocess": preprocess, "forward": forward}
    section = args.section or f"model-benchmark-{args.model}"
    publish(report, render_markdown(report), args.json, args.markdown, section)
    return 0


def render_markdown(report: Mapping[str, Any]) -> str:
    machine, pre = report["machine"], report["preprocess"]
    lines = [
        f"### Model benchmark: {report['model']} on {machine['device']}", "",
        f"Command: `{report['command']}`", "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores ({machine['usable_cores']} usable), torch "
        f"{machine['torch']}, {machine['threads']} torch threads, Python {machine['python']}. Weights: "
        f"{report['weights']}.", "",
        f"Preprocessing (JPEG bytes -> normalised tensor; photos: {', '.join(report['photos'])}): median "
        f"{pre['per_image_ms']:.2f} ms per image (min-max {pre['min_ms'] / pre['per']:.2f}-"
        f"{pre['max_ms'] / pre['per']:.2f}).", "",
        table(["Batch size", "Forward median ms (min-max)", "ms per image", "images/s", "Efficiency"],
              [[str(row["batch_size"]), f"{row['median_ms']:.1f} ({row['min_ms']:.1f}-{row['max_ms']:.1f})",
                f"{row['per_image_ms']:.1f}", f"{row['images_per_s']:.1f}",
                "n/a" if row["efficiency"] is None else f"{row['efficiency']:.2f}x"]
               for row in report["forward"]], "---:")]
    return "\n".join(lines + [
        "", "Efficiency = (T_individual x batch size) / T_batch, T_individual = the median at batch size "
        f"1 (the seed guide's formula). {report['repeats']} timed runs per size after {report['warmup']} "
        "warm-up runs; forward = model + softmax on an already-stacked batch."])


if __name__ == "__main__":
    sys.exit(main())
