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
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy
import psutil
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

from deploy.stack import ROOT, Process
from workers.metrics import BATCH_SIZE_METRIC, FORWARD_METRIC

from .results import COLUMNS, Get, Group, RunRecord, Spread, load_plan, select, spread_of, write_runs_csv

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


def publish(out: Path, name: str, run_dir: Path, plan: Mapping[str, Any], records: Sequence[RunRecord],
            csv_name: str, title: str, body: Sequence[str], extra: Sequence[tuple[str, Get]] = ()) -> None:
    """A plan's runs CSV and its section ``name``: title, preamble (``body[0]`` goes on), body, footer."""
    write_runs_csv(records, out.parent / ASSETS / csv_name, extra)
    quick = " — a `--quick` smoke run, not a measurement" if plan.get("quick") else ""
    command = plan.get("command", f"python -m loadtest.{plan.get('kind')}")
    preamble = (
        f"Generated by `{command}` "
        f"({plan.get('started_at', '?')} to {plan.get('finished_at', '?')}){quick}. Every number is read "
        f"from that run's locust CSVs and `/proc` (one row per run in [{ASSETS}/{csv_name}]({ASSETS}/"
        f"{csv_name})). Medians over {max(r.repeat for r in records)} repeat(s), (min–max) in brackets; "
        f"the variants alternated (A B C A B C), each freshly started, after a dropped warm-up of "
        f"{plan.get('warmup_s', '?')} s, with closed-loop users (users = requests in flight).")
    problems = ["### Problems during the run", "", *(f"- {e}" for e in plan["errors"]),
                ""] if plan.get("errors") else []
    replace_section(out, name, "\n".join([
        title, "", preamble + body[0], *body[1:], *problems, "### Machine", "",
        *machine_lines(plan.get("machine") or {}), "", f"Raw files: `{run_dir}`.", ""]))


def users_table(summary: Mapping[str, Mapping[int, Group]], names: Sequence[str],
                columns: Sequence[tuple[str, Callable[[Group], str]]]) -> str:
    """A row per user count, a column per (what, variant) in ``names``: every plan's load sweep."""
    return table(["Users", *(f"{n}: {what}" for what, _ in columns for n in names)],
                 [[str(u), *("—" if (g := summary.get(n, {}).get(u)) is None else cell(g)
                             for _, cell in columns for n in names)]
                  for u in sorted({u for points in summary.values() for u in points})])


def _plot(series: Mapping[str, Mapping[int, Spread]], path: Path, title: str, xlabel: str,
          ylabel: str) -> Path:
    """A line per series, its median with the range as error bars, over a log2 axis."""
    fig = Figure(figsize=(7, 4.2), dpi=110)  # no pyplot: no global state, nothing to close
    ax = fig.subplots()
    for name, points in series.items():
        if at := sorted(points):
            ax.errorbar(at, [points[x].median for x in at], marker="o", capsize=3, label=name,
                        yerr=[[points[x].median - points[x].low for x in at],
                              [points[x].high - points[x].median for x in at]])
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({x for points in series.values() for x in points}))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, ylim=(0, None))
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_vs_users(summary: Mapping[str, Mapping[int, Group]], get: Callable[[RunRecord], float | None],
                  path: Path, *, title: str, ylabel: str) -> Path:
    """Median and range of ``get`` per variant against users."""
    series = {n: {u: s for u, g in pts.items() if (s := g.of(get))} for n, pts in summary.items()}
    return _plot(series, path, title, "concurrent users (closed loop)", ylabel)


@dataclass(frozen=True)
class Ceiling:
    """A ``loadtest.model_benchmark --json`` report: model-only speed at any batch size."""
    forward: list[dict[str, Any]]  #: by batch size
    about: str  #: what the report says about itself, for a report line

    def images_per_s_at(self, size: float) -> float:
        """Linear between measured sizes, clamped to the ends."""
        return float(numpy.interp(size, [r["batch_size"] for r in self.forward],
                                  [r["images_per_s"] for r in self.forward]))


def read_benchmark(path: Path) -> Ceiling | None:
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text())
        machine, preprocess = report["machine"], report["preprocess"]["per_image_ms"]
        about = {"model": report["model"], "weights": Path(str(report["weights"])).name,
                 "device": machine.get("device"), "threads": machine.get("threads"),
                 "repeats": report["repeats"], "preprocess_ms_per_image": f"{preprocess:.2f}"}
        forward = sorted(report["forward"], key=lambda row: row["batch_size"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning("no model-only benchmark at %s: %s", path, exc)
        return None
    return Ceiling(forward, ", ".join(f"{k} {v}" for k, v in about.items())) if forward else None


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


#: The comparison's rows: name, column in the runs CSV, digits, which way is better (None: no verdict) and
#: the row's name in the guide's table (None: not there). A percentage compares as a difference in points.
METRICS = (
    ("Throughput, requests per second (RPS)", "requests_per_s", 2, "higher", "RPS (ML)"),
    ("Successful responses per second", "successes_per_s", 2, "higher", None),
    ("Latency p50, ms", "p50_ms", 0, "lower", "Latencia p50, ms"),
    ("Latency p95, ms", "p95_ms", 0, "lower", "Latencia p95, ms"),
    ("Latency p99, ms", "p99_ms", 0, "lower", None),
    ("Errors, %", "error_percent", 2, "lower", "Errores, %"),
    ("Mean batch size", "mean_batch_size", 2, None, "Tamaño promedio de batch"),
    ("Forward time per image, ms", "forward_ms_per_image", 1, "lower", "Tiempo por imagen, ms"),
    ("Wait for a batch to fill (worker metrics), ms", "batch_wait_ms", 0, "lower", None),
    ("Load generator CPU, ms per request", "cpu_ms_per_request_locust", 1, None, None),
    ("Stack CPU (web tier + worker), ms per request", "stack_cpu_ms_per_request", 1, "lower", None),
)
_WORDS = {"en": ("better", "worse", "points"), "es": ("mejor", "peor", "puntos")}
_EFFICIENCY = {"en": "Batch efficiency, (T_individual × Batch_Size) / T_batch",
               "es": "Eficiencia = (Tiempo_Individual × Batch_Size) / Tiempo_Batch"}
_PIPELINE = "Pipeline efficiency (requests/s ÷ model-only images/s at that batch size), %"


def _verdict(name: str, digits: int, better: str | None, base: Spread | None, other: Spread | None,
             lang: str) -> str:
    if base is None or other is None:
        return "—"
    if "%" in name:
        return f"{other.median - base.median:+.{digits}f} {_WORDS[lang][2]}"
    if base.median == 0:
        return "—"
    x = other.median / base.median
    if better is None or abs(x - 1.0) < 0.005:
        return f"×{x:.2f}"
    return f"×{x:.2f} ({_WORDS[lang][(x > 1.0) != (better == 'higher')]})"


def _efficiency(t_individual: float | None, runs: Sequence[RunRecord]) -> str:
    """The guide's (T_individual × Batch_Size) / T_batch with T_batch = Batch_Size × per-image time."""
    per_image = median(spread_of(runs, COLUMNS["forward_ms_per_image"]))
    batch = median(spread_of(runs, COLUMNS["mean_batch_size"]))
    if not t_individual or not per_image or not batch:
        return "—"
    return (f"({t_individual:.1f} ms × {batch:.2f}) / {batch * per_image:.1f} ms = "
            f"{t_individual / per_image:.2f}×")


def metric_table(columns: Mapping[str, Sequence[RunRecord]], baseline: str, header: Sequence[str],
                 ceiling: Ceiling | None = None, lang: str = "en") -> str:
    """A row per metric (``es``: the guide's rows), a column per variant, then the verdicts."""
    names, rows = list(columns), []
    others = [n for n in names if n != baseline]
    for english, column, digits, better, seed in METRICS:
        if (name := seed if lang == "es" else english) is not None:
            cells = {n: spread_of(columns[n], COLUMNS[column]) for n in names}
            rows.append([name, *(fmt_spread(cells[n], digits) for n in names),
                         *(_verdict(name, digits, better, cells[baseline], cells[n], lang) for n in others)])
    t_individual = median(spread_of(columns[baseline], COLUMNS["forward_ms_per_image"]))
    rows.append([_EFFICIENCY[lang], *(_efficiency(t_individual, columns[n]) for n in names),
                 *["—"] * len(others)])
    if lang == "en":
        def percent(r: RunRecord) -> float | None:
            return None if (share := pipeline_efficiency(r, ceiling)) is None else 100.0 * share
        rows.append([_PIPELINE, *(fmt_spread(spread_of(columns[n], percent), 0) for n in names),
                     *["—"] * len(others)])
    return table(header, rows)


def _ceiling_table(ceiling: Ceiling) -> str:
    t1 = ceiling.forward[0]["per_image_ms"] if ceiling.forward[0]["batch_size"] == 1 else None
    return table(["Batch size", "Forward time per batch, ms", "Per image, ms", "Images per second",
                  "Efficiency, (T_individual × Batch_Size) / T_batch"],
                 [[str(row["batch_size"]), fmt(row["median_ms"]), fmt(row["per_image_ms"]),
                   fmt(row["images_per_s"]),
                   f"({t1:.1f} × {row['batch_size']}) / {row['median_ms']:.1f} = {row['efficiency']:.2f}×"
                   if t1 and row["efficiency"] is not None else "—"] for row in ceiling.forward])


def _label(plan: Mapping[str, Any], name: str) -> str:
    env = next((v.get("env") or {} for v in plan.get("variants") or [] if v.get("name") == name), {})
    return f"`{name}` ({', '.join(f'{k}={val}' for k, val in env.items())})" if env else f"`{name}`"


def _batch_shares(runs: Sequence[RunRecord], sizes: Collection[int]) -> dict[int, Spread]:
    """% of forward passes per batch size, over ``runs``' answers."""
    passes: Counter[int] = Counter()
    for r in runs:
        passes.update(r.batch_distribution())
    shares = {size: 100.0 * passes[size] / (passes.total() or 1.0) for size in sizes}
    return {size: Spread(share, share, share, 1) for size, share in shares.items()}


def build_report(run_dir: Path, out: Path) -> list[str]:
    plan, records, variants = load_plan(run_dir)
    baseline, users = plan.get("baseline", variants[0]), plan.get("equal_users")
    seed_batch = plan.get("seed_batch", next((v for v in variants if v != baseline), baseline))
    seed = {"Individual": select(records, variant=baseline, role="seed"),
            "Batch": select(records, variant=seed_batch, role="seed")}
    seed = seed if all(seed.values()) else {}
    equal = {v: runs for v in variants if (runs := select(records, variant=v, role="equal"))}
    equal = equal if baseline in equal else {}
    ceiling, assets = read_benchmark(run_dir / "benchmark.json"), out.parent / ASSETS
    summary, rps = Group.by_variant(records, variants), COLUMNS["requests_per_s"]
    plot_vs_users(summary, rps, assets / "throughput_vs_users.png", title="Throughput against load",
                  ylabel="requests per second")
    plot_vs_users(summary, COLUMNS["p95_ms"], assets / "p95_vs_users.png", title="Latency p95 against load",
                  ylabel="latency p95, ms")
    sizes = {b.batch_size for r in records for b in r.batches}
    _plot({v: _batch_shares(select(records, variant=v, users=users) or select(records, variant=v), sizes)
           for v in variants}, assets / "batch_size_distribution.png",
          f"Batch sizes at {users} users (the answers' batch_size)", "batch size (images per forward pass)",
          "% of forward passes")
    pairs = [("Guide's plan, batch against individual", seed.get("Individual"), seed.get("Batch")),
             *((f"At {users} users, {v} against {baseline}", equal[baseline], runs)
               for v, runs in equal.items() if v != baseline)]
    headline = [f"{label}: {y.median:.2f} against {x.median:.2f} requests per second = "
                f"{y.median / x.median:.2f}×." for label, base, other in pairs
                if (x := spread_of(base or [], rps)) and (y := spread_of(other or [], rps)) and x.median > 0]
    lines = [" Latencies are end to end, as the client sees them.", "",
             *(["**Throughput:** " + " ".join(headline), ""] if headline else []),
             "Variants: " + "; ".join(_label(plan, v) for v in variants) + ".", ""]
    if seed:
        seed_users = plan.get("seed_users") or {}
        lines += [f"### The guide's test plan: individual with {seed_users.get('individual')} users, batch "
                  f"with {seed_users.get('batch')} users", "",
                  f"Individual: {_label(plan, baseline)}. Batch: {_label(plan, seed_batch)}.", "",
                  metric_table(seed, "Individual", ["Métrica", "Individual", "Batch", "Mejora"], lang="es"),
                  ""]
    if equal:
        header = ["Metric", *equal, *(f"{v} against {baseline}" for v in equal if v != baseline)]
        lines += [f"### Same load for every variant: {users} users", "",
                  metric_table(equal, baseline, header, ceiling), ""]
    sweep = users_table(summary, variants, [("requests/s", lambda g: fmt_spread(g.rps, 2)),
                                            ("p95, ms", lambda g: fmt_spread(g.p95, 0))])
    source = (f"the worker's histograms (`{BATCH_SIZE_METRIC}`, `{FORWARD_METRIC}`)."
              if any(r.mean_batch_worker is not None for r in records)
              else "the answers' `batch_size` and `timings_ms.inference`.")
    model = [f"Model only (`python -m loadtest.model_benchmark`: the forward pass alone; {ceiling.about}):",
             "", _ceiling_table(ceiling), "", "**Pipeline efficiency** = requests per second ÷ the model-only"
             " images per second at the run's mean batch size: the share of the model's speed that survives "
             "HTTP, decoding and the queue."] if ceiling else [
        "The model-only benchmark did not produce results in this run: no pipeline efficiency."]
    lines += ["### Throughput and latency against load", "",
              sweep, "",
              *(f"![{name}]({ASSETS}/{name}.png)\n" for name in ("throughput_vs_users", "p95_vs_users",
                                                                 "batch_size_distribution")),
              "### Efficiency", "",
              "The guide's formula: **Eficiencia = (Tiempo_Individual × Batch_Size) / Tiempo_Batch**: "
              "T_individual is the individual variant's forward time per image, Batch_Size the variant's "
              f"mean batch size and T_batch = Batch_Size × its forward time per image, from {source}", "",
              *model, ""]
    publish(out, SECTION, run_dir, plan, records, "runs.csv",
            "## Load comparison: individual against batch processing", lines,
            [("pipeline_efficiency", lambda r: pipeline_efficiency(r, ceiling))])
    return headline
