"""What every report shares (marked sections, tables, the machine, plots, the model-only ceiling) and
the load-comparison section, from a run folder's files alone. The guide's table is in its Spanish.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import matplotlib
import numpy
import psutil

matplotlib.use("Agg")  # no display needed

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import NullFormatter, ScalarFormatter  # noqa: E402

from deploy.stack import ROOT, Process  # noqa: E402
from workers.metrics import BATCH_SIZE_METRIC, FORWARD_METRIC  # noqa: E402

from .results import STACK_TREES, Group, RunRecord, Spread, load_plan, select, spread_of, write_runs_csv  # noqa: E402

logger = logging.getLogger(__name__)

OUT = "docs/benchmarks.md"
SECTION = "load-comparison"
ASSETS = "benchmarks"  #: next to the report: plots and CSVs
BENCHMARK_SIZES, BENCHMARK_TIMEOUT_S = (1, 2, 4, 8, 16), 900.0
_PACKAGES = ("torch", "torchvision", "timm", "celery", "kombu", "redis", "flask", "gunicorn", "locust")
STACK_SETTINGS = ("MODEL", "DEVICE", "TORCH_THREADS", "WORKER_POOL", "WORKER_CONCURRENCY", "WEB_THREADS",
                  "RESULT_TIMEOUT", "WORKER_PREFETCH_MULTIPLIER")


def replace_section(path: Path, name: str, body: str, title: str = "# Benchmarks") -> None:
    """Put ``body`` between section ``name``'s markers in ``path``, the rest untouched (missing markers are
    appended; a BEGIN without END is an error)."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else f"{title}\n"
    if (start := text.find(begin)) < 0:
        text = f"{text.rstrip()}\n\n{block}\n"
    elif (stop := text.find(end, start)) < 0:
        raise ValueError(f"{path}: {begin} without {end}; fix the file by hand")
    else:
        text = text[:start] + block + text[stop + len(end):]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # a crash leaves no half report
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "---") -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


#: A table column: its header, the measure (over runs) it shows, and its digits.
Measure = tuple[str, Callable[[RunRecord], float | None], int]


def spread_cells(runs: Sequence[RunRecord], columns: Sequence[Measure]) -> list[str]:
    return [fmt_spread(spread_of(runs, get), digits) for _, get, digits in columns]


def median(value: Spread | None) -> float | None:
    return None if value is None else value.median


def fmt_spread(value: Spread | None, digits: int = 1) -> str:
    """``median (min–max)``, or just the median when there was one repeat."""
    if value is None or value.n == 1 or value.low == value.high:
        return fmt(median(value), digits)
    return f"{fmt(value.median, digits)} ({fmt(value.low, digits)}–{fmt(value.high, digits)})"


def ratio(value: Spread | None, base: Spread | None) -> str:
    return "—" if not value or not base or base.median <= 0 else f"×{value.median / base.median:.2f}"


def _run(*argv: str, cwd: Path | None = None) -> str | None:
    try:
        return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe_machine(root: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    env = dict(os.environ) if env is None else env
    installed = {(d.metadata["Name"] or "").lower(): d.version for d in metadata.distributions()}
    gpu = _run("nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader")
    head, dirty = _run("git", "rev-parse", "--short", "HEAD", cwd=root), _run("git", "status", "--porcelain",
                                                                              cwd=root)
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "gpu": "; ".join(line.strip() for line in gpu.splitlines() if line.strip()) if gpu else None,
            "os": platform.platform(), "python": platform.python_version(),
            "packages": {name: installed[name] for name in _PACKAGES if name in installed},
            "git": f"{head}{' (with uncommitted changes)' if dirty else ''}" if head else None,
            "settings": {key: env[key] for key in STACK_SETTINGS if key in env}}


def machine_lines(info: Mapping[str, Any]) -> list[str]:
    packages = ", ".join(f"{k} {v}" for k, v in (info.get("packages") or {}).items())
    settings = ", ".join(f"{k}={v}" for k, v in (info.get("settings") or {}).items()) or "defaults"
    return [f"- CPU: {info.get('cpu')} ({info.get('logical_cpus')} logical CPUs), memory "
            f"{info.get('memory_gib')} GiB, GPU: {info.get('gpu') or 'none'}",
            f"- OS: {info.get('os')}; Python {info.get('python')}", f"- Packages: {packages}",
            f"- Code: git {info.get('git') or 'unknown'}", f"- Stack settings: {settings}"]


def preamble(plan: Mapping[str, Any], records: Sequence[RunRecord], kind: str, csv_name: str) -> str:
    quick = " — a `--quick` smoke run, not a measurement" if plan.get("quick") else ""
    return (f"Generated by `{plan.get('command', f'python -m loadtest.{kind}')}` "
            f"({plan.get('started_at', '?')} to {plan.get('finished_at', '?')}){quick}. Every number is read "
            f"from that run's locust CSVs and `/proc` (one row per run in [{ASSETS}/{csv_name}]({ASSETS}/"
            f"{csv_name})). Medians over {max(r.repeat for r in records)} repeat(s), (min–max) in brackets; "
            f"the variants alternated (A B C A B C), each freshly started, after a dropped warm-up of "
            f"{plan.get('warmup_s', '?')} s, with closed-loop users (users = requests in flight).")


def footer(plan: Mapping[str, Any], run_dir: Path) -> list[str]:
    problems = ["### Problems during the run", "", *(f"- {e}" for e in plan["errors"]),
                ""] if plan.get("errors") else []
    return [*problems, "### Machine", "", *machine_lines(plan.get("machine") or {}), "",
            f"Raw files: `{run_dir}`.", ""]


@contextlib.contextmanager
def _figure(path: Path, title: str, xlabel: str, ylabel: str, grid: Any = "both") -> Iterator[Axes]:
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    try:
        yield ax
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(True, axis=grid, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)


def plot_vs_users(summary: Mapping[str, Mapping[int, Group]], get: Callable[[RunRecord], float | None],
                  path: Path, *, title: str, ylabel: str) -> Path:
    """Median and range of ``get`` per variant against users."""
    series = {n: {u: s for u, g in pts.items() if (s := g.of(get))} for n, pts in summary.items()}
    with _figure(path, title, "concurrent users (closed loop)", ylabel) as ax:
        for name, points in series.items():
            if users := sorted(points):
                ax.errorbar(users, [points[u].median for u in users], marker="o", capsize=3, label=name,
                            yerr=[[points[u].median - points[u].low for u in users],
                                  [points[u].high - points[u].median for u in users]])
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({u for points in series.values() for u in points}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(bottom=0)
    return path


def _plot_batch_distribution(distributions: Mapping[str, Mapping[int, float]], path: Path,
                             title: str) -> Path:
    sizes = sorted({s for d in distributions.values() for s in d})
    width = 0.8 / max(len(distributions), 1)
    with _figure(path, title, "batch size (images per forward pass)", "% of forward passes", "y") as ax:
        for i, (name, dist) in enumerate(distributions.items()):
            shares = [100.0 * dist.get(s, 0.0) / (sum(dist.values()) or 1.0) for s in sizes]
            ax.bar([j + i * width for j in range(len(sizes))], shares, width, label=name)
        ax.set_xticks([j + width * (len(distributions) - 1) / 2 for j in range(len(sizes))])
        ax.set_xticklabels([str(s) for s in sizes])
    return path


@dataclass(frozen=True)
class Ceiling:
    """A ``loadtest.model_benchmark --json`` report: model-only speed at any batch size."""
    report: dict[str, Any]
    meta: dict[str, Any]  #: what the report says about itself, for a report line

    def images_per_s_at(self, size: float) -> float:
        """Linear between measured sizes, clamped to the ends."""
        rows = sorted(self.report["forward"], key=lambda row: row["batch_size"])
        return float(numpy.interp(size, [r["batch_size"] for r in rows], [r["images_per_s"] for r in rows]))


def read_benchmark(path: Path) -> Ceiling | None:
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
        meta = {"model": report["model"], "weights": Path(str(report["weights"])).name,
                "device": report["machine"].get("device"), "threads": report["machine"].get("threads"),
                "repeats": report["repeats"],
                "preprocess_ms_per_image": round(report["preprocess"]["per_image_ms"], 2)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning("no model-only benchmark at %s: %s", path, exc)
        return None
    return Ceiling(report, meta) if report["forward"] else None


def run_benchmark(json_path: Path, *, log_path: Path, sizes: Sequence[int] = BENCHMARK_SIZES,
                  extra_args: Sequence[str] = (), timeout: float = BENCHMARK_TIMEOUT_S,
                  project_root: Path = ROOT) -> Ceiling | None:
    """``python -m loadtest.model_benchmark --json PATH``; None (logged) if it fails."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "loadtest.model_benchmark", "--json", str(json_path.resolve()),
            "--sizes", ",".join(map(str, sizes)), *extra_args]
    with Process(argv, log_path=log_path, cwd=project_root, name="model_benchmark", grace=5.0) as bench:
        try:
            code = bench.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("model benchmark ran past %.0fs; killed", timeout)
            return None
    if code != 0:
        logger.warning("model benchmark exited with %s (see %s)", code, log_path)
        return None
    return read_benchmark(json_path)


def pipeline_efficiency(record: RunRecord, ceiling: Ceiling | None) -> float | None:
    """End-to-end requests/s ÷ model-only images/s at the batch size the run actually used."""
    rate = ceiling.images_per_s_at(record.mean_batch or 1.0) if ceiling else None
    return record.stats.requests_per_s / rate if rate else None


@dataclass(frozen=True)
class Metric:
    """A comparison row: its name, how to read it, which way is better, its name in the guide's table."""
    name: str
    get: Callable[[RunRecord], float | None]
    digits: int = 1
    better: str | None = None  #: "higher", "lower" or None (no verdict)
    points: bool = False  #: compared as a difference in percentage points, not a ratio
    seed: str | None = None  #: the row's name in the guide's (Spanish) table


METRICS = (
    Metric("Throughput, requests per second (RPS)", lambda r: r.stats.requests_per_s, 2, "higher",
           seed="RPS (ML)"),
    Metric("Successful responses per second", lambda r: r.stats.successes_per_s, 2, "higher"),
    Metric("Latency p50, ms", lambda r: r.stats.p50_ms, 0, "lower", seed="Latencia p50, ms"),
    Metric("Latency p95, ms", lambda r: r.stats.p95_ms, 0, "lower", seed="Latencia p95, ms"),
    Metric("Latency p99, ms", lambda r: r.stats.p99_ms, 0, "lower"),
    Metric("Errors, %", lambda r: r.stats.error_percent, 2, "lower", points=True, seed="Errores, %"),
    Metric("Mean batch size", lambda r: r.mean_batch, 2, seed="Tamaño promedio de batch"),
    Metric("Forward time per image, ms", lambda r: r.per_image_ms, 1, "lower", seed="Tiempo por imagen, ms"),
    Metric("Wait for a batch to fill (worker metrics), ms", lambda r: r.batch_wait_ms, 0, "lower"),
    Metric("Load generator CPU, ms per request", lambda r: r.cpu_ms(("locust",)), 1),
    Metric("Stack CPU (web tier + worker), ms per request", lambda r: r.cpu_ms(STACK_TREES), 1, "lower"),
)
_WORDS = {"en": ("better", "worse", "points"), "es": ("mejor", "peor", "puntos")}
_EFFICIENCY = {"en": "Batch efficiency, (T_individual × Batch_Size) / T_batch",
               "es": "Eficiencia = (Tiempo_Individual × Batch_Size) / Tiempo_Batch"}
_PIPELINE = "Pipeline efficiency (requests/s ÷ model-only images/s at that batch size), %"


def _verdict(metric: Metric, base: Spread | None, other: Spread | None, lang: str) -> str:
    better, worse, points = _WORDS[lang]
    if base is None or other is None:
        return "—"
    if metric.points:
        return f"{other.median - base.median:+.{metric.digits}f} {points}"
    if base.median == 0:
        return "—"
    x = other.median / base.median
    if metric.better is None or abs(x - 1.0) < 0.005:
        return f"×{x:.2f}"
    return f"×{x:.2f} ({better if (x > 1.0) == (metric.better == 'higher') else worse})"


def _efficiency(t_individual: Spread | None, records: Sequence[RunRecord]) -> str:
    """The guide's (T_individual × Batch_Size) / T_batch with T_batch = Batch_Size × per-image time."""
    per_image = spread_of(records, lambda r: r.per_image_ms)
    batch = spread_of(records, lambda r: r.mean_batch)
    if not t_individual or not per_image or not batch or per_image.median <= 0:
        return "—"
    t_batch = batch.median * per_image.median
    return (f"({t_individual.median:.1f} ms × {batch.median:.2f}) / {t_batch:.1f} ms = "
            f"{t_individual.median * batch.median / t_batch:.2f}×")


def metric_table(columns: Mapping[str, Sequence[RunRecord]], baseline: str, header: Sequence[str],
                 ceiling: Ceiling | None = None, lang: str = "en") -> str:
    """A row per metric (``es``: the guide's rows), a column per variant, then the verdicts."""
    names, rows = list(columns), []
    others = [n for n in names if n != baseline]
    for m in METRICS:
        if (name := m.seed if lang == "es" else m.name) is not None:
            values = {n: spread_of(columns[n], m.get) for n in names}
            rows.append([name, *(fmt_spread(values[n], m.digits) for n in names),
                         *(_verdict(m, values[baseline], values[n], lang) for n in others)])
    t_individual = spread_of(columns[baseline], lambda r: r.per_image_ms)
    rows.append([_EFFICIENCY[lang], *(_efficiency(t_individual, columns[n]) for n in names),
                 *["—"] * len(others)])
    if lang == "en":
        def percent(r: RunRecord) -> float | None:
            return None if (share := pipeline_efficiency(r, ceiling)) is None else 100.0 * share
        rows.append([_PIPELINE, *(fmt_spread(spread_of(columns[n], percent), 0) for n in names),
                     *["—"] * len(others)])
    return table(header, rows)


def _ceiling_table(ceiling: Ceiling) -> str:
    forward = sorted(ceiling.report["forward"], key=lambda row: row["batch_size"])
    t1 = forward[0]["per_image_ms"] if forward[0]["batch_size"] == 1 else None
    return table(["Batch size", "Forward time per batch, ms", "Per image, ms", "Images per second",
                  "Efficiency, (T_individual × Batch_Size) / T_batch"],
                 [[str(row["batch_size"]), fmt(row["median_ms"]), fmt(row["per_image_ms"]),
                   fmt(row["images_per_s"]),
                   f"({t1:.1f} × {row['batch_size']}) / {row['median_ms']:.1f} = {row['efficiency']:.2f}×"
                   if t1 and row["efficiency"] is not None else "—"] for row in forward])


def _label(plan: Mapping[str, Any], name: str) -> str:
    env = next((v.get("env") or {} for v in plan.get("variants") or [] if v.get("name") == name), {})
    return f"`{name}` ({', '.join(f'{k}={val}' for k, val in env.items())})" if env else f"`{name}`"


def _headline(plan: Mapping[str, Any], seed: Mapping[str, Sequence[RunRecord]],
              equal: Mapping[str, Sequence[RunRecord]], baseline: str) -> list[str]:
    pairs = [("Guide's plan, batch against individual", seed.get("Individual"), seed.get("Batch"))]
    pairs += [(f"At {plan.get('equal_users')} users, {v} against {baseline}", equal[baseline], runs)
              for v, runs in equal.items() if v != baseline]
    out = []
    for label, base, other in pairs:
        x, y = (spread_of(runs or [], lambda r: r.stats.requests_per_s) for runs in (base, other))
        if x and y and x.median > 0:
            out.append(f"{label}: {y.median:.2f} against {x.median:.2f} requests per second "
                       f"= {y.median / x.median:.2f}×.")
    return out


def build_report(run_dir: Path, out: Path) -> list[str]:
    plan, records, variants = load_plan(run_dir)
    baseline = plan.get("baseline", variants[0])
    seed_batch = plan.get("seed_batch", next((v for v in variants if v != baseline), baseline))
    seed = {"Individual": select(records, variant=baseline, role="seed"),
            "Batch": select(records, variant=seed_batch, role="seed")}
    seed = seed if all(seed.values()) else {}
    equal = {v: runs for v in variants if (runs := select(records, variant=v, role="equal"))}
    equal = equal if baseline in equal else {}
    ceiling, assets = read_benchmark(run_dir / "benchmark.json"), out.parent / ASSETS
    equal_users = plan.get("equal_users")
    summary = Group.by_variant(records, variants)
    distributions: dict[str, dict[int, float]] = {}
    for v in variants:
        merged = distributions.setdefault(v, {})
        for r in select(records, variant=v, users=equal_users) or select(records, variant=v):
            for size, passes in r.batch_distribution().items():
                merged[size] = merged.get(size, 0.0) + passes
    efficiency = ("pipeline_efficiency", lambda r: pipeline_efficiency(r, ceiling))
    write_runs_csv(records, assets / "runs.csv", [efficiency])
    plot_vs_users(summary, lambda r: r.stats.requests_per_s, assets / "throughput_vs_users.png",
                  title="Throughput against load", ylabel="requests per second")
    plot_vs_users(summary, lambda r: r.stats.p95_ms, assets / "p95_vs_users.png",
                  title="Latency p95 against load", ylabel="latency p95, ms")
    _plot_batch_distribution(distributions, assets / "batch_size_distribution.png",
                             f"Batch sizes at {equal_users} users (the answers' batch_size)")
    headline = _headline(plan, seed, equal, baseline)
    lines = ["## Load comparison: individual against batch processing", "",
             preamble(plan, records, "compare", "runs.csv") + " Latencies are end to end, as the client sees "
             "them.", "",
             *(["**Throughput:** " + " ".join(headline), ""] if headline else []),
             "Variants: " + "; ".join(_label(plan, v) for v in variants) + ".", ""]
    if seed:
        users = plan.get("seed_users") or {}
        lines += [f"### The guide's test plan: individual with {users.get('individual')} users, batch with "
                  f"{users.get('batch')} users", "", f"Individual: {_label(plan, baseline)}. Batch: "
                  f"{_label(plan, seed_batch)}.", "",
                  metric_table(seed, "Individual", ["Métrica", "Individual", "Batch", "Mejora"], lang="es"),
                  ""]
    if equal:
        header = ["Metric", *equal, *(f"{v} against {baseline}" for v in equal if v != baseline)]
        lines += [f"### Same load for every variant: {equal_users} users", "",
                  metric_table(equal, baseline, header, ceiling), ""]
    def at(v: str, u: int) -> Group:
        return summary.get(v, {}).get(u) or Group(v, u, [])
    sweep_rows = [[str(u), *(fmt_spread(at(v, u).rps, 2) for v in variants),
                   *(fmt_spread(at(v, u).p95, 0) for v in variants)]
                  for u in sorted({r.users for r in records})]
    worker = any(r.mean_batch_worker is not None for r in records)
    lines += ["### Throughput and latency against load", "",
              table(["Users", *(f"{v}: requests/s" for v in variants), *(f"{v}: p95, ms" for v in variants)],
                    sweep_rows), "",
              *(f"![{name}]({ASSETS}/{name}.png)\n" for name in ("throughput_vs_users", "p95_vs_users",
                                                                 "batch_size_distribution")),
              "### Efficiency", "",
              "The guide's formula: **Eficiencia = (Tiempo_Individual × Batch_Size) / Tiempo_Batch**: "
              "T_individual is the individual variant's forward time per image, Batch_Size the variant's "
              "mean batch size and T_batch = Batch_Size × its forward time per image, from "
              + (f"the worker's histograms (`{BATCH_SIZE_METRIC}`, `{FORWARD_METRIC}`)." if worker else
                 "the answers' `batch_size` and `timings_ms.inference`."), ""]
    if ceiling is not None:
        meta = ", ".join(f"{k} {v}" for k, v in ceiling.meta.items())
        lines += [f"Model only (`python -m loadtest.model_benchmark`: the forward pass alone; {meta}):", "",
                  _ceiling_table(ceiling), "",
                  "**Pipeline efficiency** = requests per second ÷ the "
                  "model-only images per second at the run's mean batch size: the share of the model's speed "
                  "that survives HTTP, decoding and the queue.", ""]
    else:
        lines += ["The model-only benchmark did not produce results in this run: no pipeline efficiency.", ""]
    replace_section(out, SECTION, "\n".join(lines + footer(plan, run_dir)))
    return headline
