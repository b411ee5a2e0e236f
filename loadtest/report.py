"""Build the load-comparison section of ``docs/benchmarks.md`` from a run folder's files alone.

Select the runs each table shows, tabulate them, plot them, write the section
(only that marked section of the file is replaced). One language per table: the
guide's comparison table in its Spanish, every other table in English. Rebuild a
report from an earlier run with ``python -m loadtest.report RUN_DIR --out FILE``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy

from deploy.stack import ROOT, Process
from workers.metrics import BATCH_SIZE_METRIC, FORWARD_METRIC

from . import defaults, plots, results
from .markdown import fmt, fmt_spread, machine_lines, replace_section, table
from .model_benchmark import BenchmarkReport
from .results import STACK_TREES, RunRecord, Spread, load_plan, select, spread_of

__all__ = ["ASSETS", "METRICS", "SECTION", "Ceiling", "Metric", "Report", "build_report", "footer", "main",
           "preamble", "read_benchmark", "run_benchmark", "write_runs_csv"]

logger = logging.getLogger(__name__)

SECTION = "load-comparison"
#: Folder (next to the report) for plots and the combined CSV.
ASSETS = "benchmarks"


@dataclass(frozen=True)
class Metric:
    """One row of a comparison table: its names, how to read it from a run, how to compare it."""

    name: str  #: the English row name
    get: Callable[[RunRecord], float | None]
    digits: int = 1
    better: str | None = None  #: "higher", "lower" or None (no verdict)
    points: bool = False  #: compare as a difference in percentage points, not a ratio
    seed: str | None = None  #: the row's name in the guide's (Spanish) table, None: not in it


METRICS: tuple[Metric, ...] = (
    Metric("Throughput, requests per second (RPS)", lambda r: r.stats.requests_per_s, 2, "higher",
           seed="RPS (ML)"),
    Metric("Successful responses per second", lambda r: r.stats.successes_per_s, 2, "higher"),
    Metric("Latency, median (50th percentile, p50), ms", lambda r: r.stats.p50_ms, 0, "lower",
           seed="Latencia p50, ms"),
    Metric("Latency, 95th percentile (p95), ms", lambda r: r.stats.p95_ms, 0, "lower",
           seed="Latencia p95, ms"),
    Metric("Latency, 99th percentile (p99), ms", lambda r: r.stats.p99_ms, 0, "lower"),
    Metric("Errors, % of requests", lambda r: r.stats.error_percent, 2, "lower", points=True,
           seed="Errores, %"),
    Metric("Mean batch size, images per forward pass", lambda r: r.mean_batch, 2,
           seed="Tamaño promedio de batch"),
    Metric("Forward time per image, ms", lambda r: r.per_image_ms, 1, "lower", seed="Tiempo por imagen, ms"),
    Metric("Wait for a batch to fill (oldest request, worker metrics), mean, ms",
           lambda r: r.batch_wait_ms, 0, "lower"),
    Metric("Load generator CPU, ms per request", lambda r: r.cpu_ms(("locust",)), 1),
    Metric("Stack CPU (web tier + worker), ms per request", lambda r: r.cpu_ms(STACK_TREES), 1, "lower"),
)
#: The words a verdict uses, per language.
_WORDS = {"en": ("better", "worse", "points"), "es": ("mejor", "peor", "puntos")}
_EFFICIENCY = {"en": "Batch efficiency, (T_individual × Batch_Size) / T_batch",
               "es": "Eficiencia = (Tiempo_Individual × Batch_Size) / Tiempo_Batch"}
_PIPELINE = "Pipeline efficiency, requests per second ÷ model-only images per second at that batch size, %"


@dataclass(frozen=True)
class Ceiling:
    """A benchmark report, with model-only speed at any batch size."""

    report: BenchmarkReport
    #: What the report says about itself, for a report line.
    meta: dict[str, Any]

    def images_per_s_at(self, size: float) -> float:
        """Model-only images/s at ``size``, linear between measured sizes, clamped to the ends."""
        rows = sorted(self.report["forward"], key=lambda row: row["batch_size"])
        return float(numpy.interp(size, [r["batch_size"] for r in rows], [r["images_per_s"] for r in rows]))


def read_benchmark(path: Path) -> Ceiling | None:
    """The report at ``path``; None (logged) when it is missing, unreadable or has no forward rows."""
    if not path.exists():
        return None
    try:
        report: BenchmarkReport = json.loads(path.read_text())
        machine = report["machine"]
        meta = {"model": report["model"], "weights": Path(str(report["weights"])).name,
                "device": machine.get("device"), "threads": machine.get("threads"),
                "repeats": report["repeats"],
                "preprocess_ms_per_image": round(report["preprocess"]["per_image_ms"], 2)}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("no model-only benchmark at %s: %s", path, exc)
        return None
    return Ceiling(report, meta) if report["forward"] else None


def run_benchmark(json_path: Path, *, log_path: Path, sizes: Sequence[int] = defaults.BENCHMARK_SIZES,
                  extra_args: Sequence[str] = (), timeout: float = defaults.BENCHMARK_TIMEOUT_S,
                  project_root: Path = ROOT) -> Ceiling | None:
    """Run ``python -m loadtest.model_benchmark --json PATH --sizes ... [extra_args]``; None (logged)
    if it fails."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "loadtest.model_benchmark", "--json", str(json_path.resolve()),
            "--sizes", ",".join(map(str, sizes)), *extra_args]
    with Process(argv, log_path=log_path, cwd=project_root, name="loadtest.model_benchmark",
                 grace=5.0) as bench:
        try:
            code = bench.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("model benchmark ran past %.0fs; killed", timeout)
            return None
    if code != 0:
        logger.warning("model benchmark exited with %s (see %s)", code, log_path)
        return None
    return read_benchmark(json_path)


@dataclass
class Report:
    """What was written, and the headline numbers for the console."""

    assets: list[Path]
    headline: list[str]


# -- select -------------------------------------------------------------------

@dataclass(frozen=True)
class _Selection:
    """The runs of a report, grouped the way its tables show them."""

    plan: dict[str, Any]
    records: list[RunRecord]
    variants: list[str]
    baseline: str
    seed: dict[str, list[RunRecord]]  #: "Individual"/"Batch" -> the guide's runs
    equal: dict[str, list[RunRecord]]  #: variant -> its runs at the equal load
    ceiling: Ceiling | None


def _select(run_dir: Path) -> _Selection:
    plan, records, variants = load_plan(run_dir)
    baseline = plan.get("baseline", variants[0])
    seed_batch = plan.get("seed_batch", next((v for v in variants if v != baseline), baseline))
    seed = {"Individual": select(records, variant=baseline, role="seed"),
            "Batch": select(records, variant=seed_batch, role="seed")}
    equal = {v: runs for v in variants if (runs := select(records, variant=v, role="equal"))}
    return _Selection(plan, records, variants, baseline, seed if all(seed.values()) else {},
                      equal if baseline in equal else {}, read_benchmark(run_dir / "benchmark.json"))


def _sweep(s: _Selection, get: Callable[[RunRecord], float | None]) -> dict[str, dict[int, Spread]]:
    """variant -> users -> the metric's spread over repeats."""
    out: dict[str, dict[int, Spread]] = {}
    for v in s.variants:
        points = {u: spread_of(select(s.records, variant=v, users=u), get)
                  for u in sorted({r.users for r in select(s.records, variant=v)})}
        out[v] = {u: p for u, p in points.items() if p is not None}
    return out


def pipeline_efficiency(record: RunRecord, ceiling: Ceiling | None) -> float | None:
    """End-to-end requests/s ÷ model-only images/s at the batch size this run actually used."""
    rate = ceiling.images_per_s_at(record.mean_batch or 1.0) if ceiling else None
    return record.stats.requests_per_s / rate if rate else None


# -- tabulate -----------------------------------------------------------------

def _verdict(metric: Metric, base: Spread | None, other: Spread | None, lang: str) -> str:
    better, worse, points = _WORDS[lang]
    if base is None or other is None:
        return "—"
    if metric.points:
        return f"{other.median - base.median:+.{metric.digits}f} {points}"
    if base.median == 0:
        return "—"
    ratio = other.median / base.median
    if metric.better is None or abs(ratio - 1.0) < 0.005:
        return f"×{ratio:.2f}"
    good = ratio > 1.0 if metric.better == "higher" else ratio < 1.0
    return f"×{ratio:.2f} ({better if good else worse})"


def _efficiency(t_individual: Spread | None, records: Sequence[RunRecord]) -> str:
    """The guide's (T_individual × Batch_Size) / T_batch with T_batch = Batch_Size × per-image time."""
    per_image = spread_of(records, lambda r: r.per_image_ms)
    batch = spread_of(records, lambda r: r.mean_batch)
    if not t_individual or not per_image or not batch or per_image.median <= 0:
        return "—"
    t_batch = batch.median * per_image.median
    value = t_individual.median * batch.median / t_batch
    return f"({t_individual.median:.1f} ms × {batch.median:.2f}) / {t_batch:.1f} ms = {value:.2f}×"


def metric_table(columns: Mapping[str, Sequence[RunRecord]], baseline: str, header: Sequence[str],
                 ceiling: Ceiling | None = None, lang: str = "en") -> str:
    """One row per metric (``lang="es"``: the guide's rows), one column per variant, then verdicts."""
    names = list(columns)
    others = [n for n in names if n != baseline]
    rows: list[list[str]] = []
    for metric in METRICS:
        name = metric.seed if lang == "es" else metric.name
        if name is None:
            continue
        values = {n: spread_of(columns[n], metric.get) for n in names}
        rows.append([name] + [fmt_spread(values[n], metric.digits) for n in names]
                    + [_verdict(metric, values[baseline], values[n], lang) for n in others])
    t_individual = spread_of(columns[baseline], lambda r: r.per_image_ms)
    rows.append([_EFFICIENCY[lang], *(_efficiency(t_individual, columns[n]) for n in names)]
                + ["—"] * len(others))
    if lang == "en":
        def percent(r: RunRecord) -> float | None:
            return None if (share := pipeline_efficiency(r, ceiling)) is None else 100.0 * share
        rows.append([_PIPELINE, *(fmt_spread(spread_of(columns[n], percent), 0) for n in names)]
                    + ["—"] * len(others))
    return table(header, rows)


def _sweep_table(s: _Selection, rps: Mapping[str, Mapping[int, Spread]],
                 p95: Mapping[str, Mapping[int, Spread]]) -> str:
    header = ["Users", *(f"{v}: requests per second" for v in s.variants),
              *(f"{v}: latency p95, ms" for v in s.variants)]
    return table(header, [[str(u), *(fmt_spread(rps[v].get(u), 2) for v in s.variants),
                           *(fmt_spread(p95[v].get(u), 0) for v in s.variants)]
                          for u in sorted({r.users for r in s.records})])


def _ceiling_table(ceiling: Ceiling) -> str:
    forward = sorted(ceiling.report["forward"], key=lambda row: row["batch_size"])
    t1 = forward[0]["per_image_ms"] if forward[0]["batch_size"] == 1 else None
    rows = [[str(row["batch_size"]), fmt(row["median_ms"], 1), fmt(row["per_image_ms"], 1),
             fmt(row["images_per_s"], 1),
             f"({t1:.1f} × {row['batch_size']}) / {row['median_ms']:.1f} = {row['efficiency']:.2f}×"
             if t1 and row["efficiency"] is not None else "—"]
            for row in forward]
    return table(["Batch size", "Forward time per batch, ms (median)", "Forward time per image, ms",
                  "Images per second", "Efficiency, (T_individual × Batch_Size) / T_batch"], rows)


# -- plot -----------------------------------------------------------------------

def _plot(s: _Selection, rps: plots.Series, p95: plots.Series, assets: Path) -> list[Path]:
    equal = s.plan.get("equal_users")
    distributions: dict[str, dict[int, float]] = {}
    for v in s.variants:
        merged = distributions.setdefault(v, {})
        for r in select(s.records, variant=v, users=equal) or select(s.records, variant=v):
            for size, passes in r.batch_distribution().items():
                merged[size] = merged.get(size, 0.0) + passes
    return [
        plots.plot_vs_users(rps, assets / "throughput_vs_users.png", title="Throughput against load",
                            ylabel="requests per second"),
        plots.plot_vs_users(p95, assets / "p95_vs_users.png", title="Latency, 95th percentile, against load",
                            ylabel="latency p95, ms"),
        plots.plot_batch_distribution(
            distributions, assets / "batch_size_distribution.png",
            title=f"Batch sizes at {equal} users (from the answers' batch_size)" if equal else "Batch sizes"),
    ]


# -- write ----------------------------------------------------------------------

_CSV_COLUMNS: tuple[tuple[str, Callable[[RunRecord], Any]], ...] = (
    ("variant", lambda r: r.variant), ("mode", lambda r: r.mode),
    ("use_batch_processing", lambda r: r.env.get("USE_BATCH_PROCESSING", "")),
    ("batch_size_setting", lambda r: r.env.get("BATCH_SIZE", "")),
    ("batch_timeout_s", lambda r: r.env.get("BATCH_TIMEOUT", "")),
    ("batch_policy", lambda r: r.env.get("BATCH_POLICY", "")),
    ("users", lambda r: r.users), ("repeat", lambda r: r.repeat), ("roles", lambda r: " ".join(r.roles)),
    ("duration_s", lambda r: r.meta.get("duration_s")), ("requests", lambda r: r.stats.requests),
    ("failures", lambda r: r.stats.failures), ("error_percent", lambda r: r.stats.error_percent),
    ("requests_per_s", lambda r: r.stats.requests_per_s),
    ("successes_per_s", lambda r: r.stats.successes_per_s),
    ("mean_ms", lambda r: r.stats.mean_ms), ("p50_ms", lambda r: r.stats.p50_ms),
    ("p95_ms", lambda r: r.stats.p95_ms), ("p99_ms", lambda r: r.stats.p99_ms),
    ("max_ms", lambda r: r.stats.max_ms),
    ("mean_batch_size", lambda r: r.mean_batch), ("mean_batch_size_worker", lambda r: r.mean_batch_worker),
    ("mean_batch_size_client", lambda r: r.mean_batch_client),
    ("mean_batch_size_per_request",
     lambda r: sum(b.batch_size * b.requests for b in r.batches) / r.answered if r.answered else None),
    ("forward_ms_per_image", lambda r: r.per_image_ms),
    ("locust_cpu_s", lambda r: r.cpu_s(("locust",))), ("stack_cpu_s", lambda r: r.cpu_s(STACK_TREES)),
    ("locust_cpu_ms_per_request", lambda r: r.cpu_ms(("locust",))),
    ("stack_cpu_ms_per_request", lambda r: r.cpu_ms(STACK_TREES)),
)


def write_runs_csv(records: Sequence[RunRecord], path: Path, ceiling: Ceiling | None) -> Path:
    """One row per measured run with every number the reports use."""
    return results.write_runs_csv(records, path, [*_CSV_COLUMNS, ("pipeline_efficiency",
                                                                  lambda r: pipeline_efficiency(r, ceiling))])


def _variant_label(plan: Mapping[str, Any], name: str) -> str:
    env = next((v.get("env") or {} for v in plan.get("variants") or [] if v.get("name") == name), {})
    settings = ", ".join(f"{k}={val}" for k, val in env.items())
    return f"`{name}` ({settings})" if settings else f"`{name}`"


def _metric_sources(records: Sequence[RunRecord]) -> str:
    if any(r.mean_batch_worker is not None for r in records):
        return (f"Mean batch size and forward time per image come from the worker's Prometheus histograms "
                f"(`{BATCH_SIZE_METRIC}`, `{FORWARD_METRIC}`: sum ÷ count over each run), else from the "
                f"`batch_size` and `timings_ms.inference` of the answers.")
    return ("The worker exported no batch-size histogram, so mean batch size and forward time per image come "
            "from the answers: mean batch size = answers ÷ number of batches they came from "
            "(Σ 1/batch_size), forward time per image = mean of `timings_ms.inference` ÷ `batch_size`.")


def _headline(s: _Selection) -> list[str]:
    """The throughput ratios, with both numbers."""
    pairs = [("Guide's plan, batch against individual", s.seed.get("Individual"), s.seed.get("Batch"))]
    pairs += [(f"At {s.plan.get('equal_users')} users, {v} against {s.baseline}", s.equal[s.baseline], runs)
              for v, runs in s.equal.items() if v != s.baseline]
    out = []
    for label, base, other in pairs:
        x = spread_of(base or [], lambda r: r.stats.requests_per_s)
        y = spread_of(other or [], lambda r: r.stats.requests_per_s)
        if x and y and x.median > 0:
            out.append(f"{label}: {y.median:.2f} against {x.median:.2f} requests per second "
                       f"= {y.median / x.median:.2f}×.")
    return out


def preamble(plan: Mapping[str, Any], records: Sequence[RunRecord], kind: str, csv_name: str) -> str:
    """Where a section's numbers come from: the command, its time, the files, repeats and warm-up."""
    command = plan.get("command", f"python -m loadtest.{kind}")
    return (f"Generated by `{command}` ({plan.get('started_at', '?')} to {plan.get('finished_at', '?')}). "
            f"Every number below is read from that run's locust CSV files (combined in "
            f"[{ASSETS}/{csv_name}]({ASSETS}/{csv_name})); none is typed in. Values are medians over "
            f"{max(r.repeat for r in records)} repeat(s), (min–max) in brackets; each variant ran on a "
            f"freshly started stack after a dropped warm-up of {plan.get('warmup_s', '?')} s, with "
            f"closed-loop users (no think time), so users = requests in flight.")


def footer(plan: Mapping[str, Any], run_dir: Path) -> list[str]:
    """A section's last lines: problems during the run, the machine, the raw files."""
    problems = ["### Problems during the run", "", *(f"- {e}" for e in plan["errors"]), ""] \
        if plan.get("errors") else []
    return [*problems, "### Machine", "", *machine_lines(plan.get("machine") or {}), "",
            f"Raw files: `{run_dir}`.", ""]


def _section(s: _Selection, run_dir: Path, rps: Mapping[str, Mapping[int, Spread]],
             p95: Mapping[str, Mapping[int, Spread]], headline: Sequence[str]) -> str:
    plan = s.plan
    lines = ["## Load comparison: individual against batch processing", "",
             preamble(plan, s.records, "compare", "runs.csv") + " Variants ran alternately (A B C A B C). "
             "Latencies are end to end as the client sees them, locust's rounding included.", ""]
    if headline:
        lines += ["**Throughput:** " + " ".join(headline), ""]
    lines += ["Variants: " + "; ".join(_variant_label(plan, v) for v in s.variants) + ".", ""]
    if s.seed:
        seed_users = plan.get("seed_users") or {}
        lines += [
            f"### The guide's test plan: individual with {seed_users.get('individual')} users, batch with "
            f"{seed_users.get('batch')} users", "",
            f"Individual: {_variant_label(plan, s.baseline)}. Batch: "
            f"{_variant_label(plan, plan.get('seed_batch', s.variants[-1]))}.", "",
            metric_table(s.seed, "Individual", ["Métrica", "Individual", "Batch", "Mejora"], lang="es"), "",
        ]
    if s.equal:
        others = [v for v in s.equal if v != s.baseline]
        header = ["Metric", *s.equal, *(f"{v} against {s.baseline}" for v in others)]
        lines += [f"### Same load for every variant: {plan.get('equal_users')} users", "",
                  metric_table(s.equal, s.baseline, header, s.ceiling), ""]
    lines += [
        "### Throughput and latency against load", "", _sweep_table(s, rps, p95), "",
        f"![Throughput against users]({ASSETS}/throughput_vs_users.png)", "",
        f"![Latency p95 against users]({ASSETS}/p95_vs_users.png)", "",
        f"![Batch size distribution]({ASSETS}/batch_size_distribution.png)", "",
        "### Efficiency", "",
        "The guide's formula: **Eficiencia = (T_individual × Batch_Size) / T_batch**, where T_individual is "
        "the forward time of one image on its own and T_batch the forward time of one batch of Batch_Size "
        "images. In the tables above T_individual is the individual variant's forward time per image, "
        "Batch_Size the variant's mean batch size and T_batch = Batch_Size × its forward time per image.", "",
        _metric_sources(s.records), "",
    ]
    if s.ceiling is not None:
        meta = ", ".join(f"{k} {v}" for k, v in s.ceiling.meta.items())
        lines += [
            f"Model only (`python -m loadtest.model_benchmark`: the forward pass alone, no HTTP, no queue, "
            f"no "
            f"decoding; {meta}):", "", _ceiling_table(s.ceiling), "",
            "**Pipeline efficiency** = end-to-end requests per second ÷ model-only images per second at the "
            "batch size the run actually used (interpolated between measured sizes): the share of the "
            "model's own speed that survives HTTP, decoding and the queue.", "",
        ]
    else:
        lines += ["The model-only benchmark (`python -m loadtest.model_benchmark`) did not produce results "
                  "in this "
                  "run, so pipeline efficiency is not shown.", ""]
    return "\n".join(lines + footer(plan, run_dir))


def build_report(run_dir: Path, out: Path) -> Report:
    """Write plots, ``runs.csv`` and the load-comparison section of ``out`` from ``run_dir``."""
    s = _select(run_dir)
    assets = out.parent / ASSETS
    rps, p95 = _sweep(s, lambda r: r.stats.requests_per_s), _sweep(s, lambda r: r.stats.p95_ms)
    files = [write_runs_csv(s.records, assets / "runs.csv", s.ceiling), *_plot(s, rps, p95, assets)]
    report = Report(files, _headline(s))
    replace_section(out, SECTION, _section(s, run_dir, rps, p95, report.headline))
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Rebuild the report from a run folder."""
    parser = argparse.ArgumentParser(description="Rebuild the load-comparison report from a run folder.")
    parser.add_argument("run_dir", type=Path, help="folder written by python -m loadtest.compare --csv-dir")
    parser.add_argument("--out", type=Path, default=Path(defaults.OUT), help="report (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = build_report(args.run_dir, args.out)
    for line in report.headline:
        print(line)
    print(f"wrote {args.out} and {len(report.assets)} files under {args.out.parent / ASSETS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
