"""Build the load-comparison section of ``docs/benchmarks.md`` from a run folder.

Every number comes from the run's own files (locust's ``_stats.csv``, the
locustfile's ``_batches.csv``, ``run.json`` and the model benchmark's JSON);
nothing is typed in. Only the text between ``<!-- BEGIN load-comparison -->``
and ``<!-- END load-comparison -->`` is replaced, so other tools' sections of
the same file survive. Rebuild a report from an earlier run with::

    python -m loadtest.report RUN_DIR --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import machine, plots
from .ceiling import Ceiling, read_benchmark
from .markdown import fmt, fmt_spread, replace_section, table
from .results import RunRecord, Spread, load_runs, select, spread

__all__ = [
    "METRICS",
    "PLAN_JSON",
    "SECTION",
    "Metric",
    "ReportResult",
    "build_report",
    "main",
    "pipeline_efficiency",
    "write_runs_csv",
]

logger = logging.getLogger(__name__)

SECTION = "load-comparison"
PLAN_JSON = "plan.json"
BENCHMARK_JSON = "benchmark.json"
#: Folder (next to the report) for plots and the combined CSV.
ASSETS = "benchmarks"


@dataclass(frozen=True)
class Metric:
    """One row of a comparison table: a full name, how to read it from a run, how to compare it."""

    name: str
    get: Callable[[RunRecord], float | None]
    digits: int = 1
    better: str | None = None  #: "higher", "lower" or None (no verdict)
    points: bool = False  #: compare as a difference in percentage points, not a ratio


def pipeline_efficiency(record: RunRecord, ceiling: Ceiling | None) -> float | None:
    """End-to-end requests/s ÷ model-only images/s at the batch size this run actually used."""
    if ceiling is None:
        return None
    size = record.mean_batch or 1.0
    rate = ceiling.images_per_s_at(size)
    return record.stats.requests_per_s / rate if rate else None


def _error_pct(r: RunRecord) -> float | None:
    rate = r.stats.error_rate
    return None if rate is None else 100.0 * rate


METRICS: tuple[Metric, ...] = (
    Metric("Throughput, requests per second (RPS)", lambda r: r.stats.requests_per_s, 2, "higher"),
    Metric("Successful responses per second", lambda r: r.stats.successes_per_s, 2, "higher"),
    Metric("Latency, median (50th percentile, p50), ms", lambda r: r.stats.p50_ms, 0, "lower"),
    Metric("Latency, 95th percentile (p95), ms", lambda r: r.stats.p95_ms, 0, "lower"),
    Metric("Latency, 99th percentile (p99), ms", lambda r: r.stats.p99_ms, 0, "lower"),
    Metric("Errors, % of requests", _error_pct, 2, "lower", points=True),
    Metric("Mean batch size, images per forward pass", lambda r: r.mean_batch, 2),
    Metric("Forward time per image, ms", lambda r: r.per_image_ms, 1, "lower"),
    Metric(
        "Wait for a batch to fill (oldest request, worker metrics), mean, ms",
        lambda r: r.batch_wait_ms,
        0,
        "lower",
    ),
    Metric("Load generator CPU, ms per request", lambda r: r.cpu_ms_per_request("locust_cpu_s"), 1),
    Metric(
        "Stack CPU (web app + worker), ms per request",
        lambda r: r.cpu_ms_per_request("stack_cpu_s"),
        1,
        "lower",
    ),
)


@dataclass
class ReportResult:
    """What was written, and the headline numbers for the console."""

    out: Path
    assets: list[Path] = field(default_factory=list)
    headline: list[str] = field(default_factory=list)


def _spread(records: Sequence[RunRecord], get: Callable[[RunRecord], float | None]) -> Spread | None:
    return spread(get(r) for r in records)


def _verdict(metric: Metric, base: Spread | None, other: Spread | None) -> str:
    if base is None or other is None:
        return "—"
    if metric.points:
        diff = other.median - base.median
        return f"{diff:+.{metric.digits}f} points"
    if base.median == 0:
        return "—"
    ratio = other.median / base.median
    if metric.better is None or abs(ratio - 1.0) < 0.005:
        return f"×{ratio:.2f}"
    good = ratio > 1.0 if metric.better == "higher" else ratio < 1.0
    return f"×{ratio:.2f} ({'better' if good else 'worse'})"


def _efficiency(t_individual: Spread | None, per_image: Spread | None, batch: Spread | None) -> str:
    """The guide's (T_individual × Batch_Size) / T_batch with T_batch = Batch_Size × per-image time."""
    if not t_individual or not per_image or not batch or per_image.median <= 0:
        return "—"
    t_batch = batch.median * per_image.median
    value = t_individual.median * batch.median / t_batch
    return f"({t_individual.median:.1f} ms × {batch.median:.2f}) / {t_batch:.1f} ms = {value:.2f}×"


def _metric_table(
    columns: Mapping[str, Sequence[RunRecord]], baseline: str, ceiling: Ceiling | None, header: Sequence[str]
) -> str:
    names = list(columns)
    others = [n for n in names if n != baseline]
    rows = []
    for metric in METRICS:
        values = {n: _spread(columns[n], metric.get) for n in names}
        row = [metric.name] + [fmt_spread(values[n], metric.digits) for n in names]
        row += [_verdict(metric, values.get(baseline), values[n]) for n in others]
        rows.append(row)
    t_ind = _spread(columns.get(baseline, []), lambda r: r.per_image_ms)
    eff = ["Batch efficiency, (T_individual × Batch_Size) / T_batch"]
    for n in names:
        recs = columns[n]
        eff.append(
            _efficiency(t_ind, _spread(recs, lambda r: r.per_image_ms), _spread(recs, lambda r: r.mean_batch))
        )
    rows.append(eff + ["—"] * len(others))
    pipe = [_spread(columns[n], lambda r: _pct(pipeline_efficiency(r, ceiling))) for n in names]
    rows.append(
        ["Pipeline efficiency, requests per second ÷ model-only images per second at that batch size, %"]
        + [fmt_spread(p, 0) for p in pipe]
        + ["—"] * len(others)
    )
    return table(header, rows)


def _pct(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def _by_variant(
    records: Sequence[RunRecord], variants: Sequence[str], **filters: Any
) -> dict[str, list[RunRecord]]:
    return {v: select(records, variant=v, **filters) for v in variants}


def _sweep(
    records: Sequence[RunRecord], variants: Sequence[str], get: Callable[[RunRecord], float | None]
) -> dict[str, dict[int, Spread]]:
    out: dict[str, dict[int, Spread]] = {}
    for v in variants:
        points: dict[int, Spread] = {}
        for users in sorted({r.users for r in select(records, variant=v)}):
            s = _spread(select(records, variant=v, users=users), get)
            if s is not None:
                points[users] = s
        out[v] = points
    return out


def _ceiling_table(ceiling: Ceiling) -> str:
    t1 = ceiling.points[0].per_image_ms if ceiling.points[0].batch_size == 1 else None
    rows = []
    for p in ceiling.points:
        eff = (
            f"({t1:.1f} × {p.batch_size}) / {p.median_ms:.1f} = {t1 * p.batch_size / p.median_ms:.2f}×"
            if t1
            else "—"
        )
        rows.append(
            [str(p.batch_size), fmt(p.median_ms, 1), fmt(p.per_image_ms, 1), fmt(p.images_per_s, 1), eff]
        )
    return table(
        [
            "Batch size",
            "Forward time per batch, ms (median)",
            "Forward time per image, ms",
            "Images per second",
            "Efficiency, (T_individual × Batch_Size) / T_batch",
        ],
        rows,
    )


def write_runs_csv(records: Sequence[RunRecord], path: Path, ceiling: Ceiling | None) -> Path:
    """One row per measured run with every number the reports use."""
    columns = [
        "variant",
        "mode",
        "use_batch_processing",
        "batch_size_setting",
        "batch_timeout_s",
        "batch_policy",
        "users",
        "repeat",
        "roles",
        "duration_s",
        "requests",
        "failures",
        "error_percent",
        "requests_per_s",
        "successes_per_s",
        "mean_ms",
        "p50_ms",
        "p95_ms",
        "p99_ms",
        "max_ms",
        "mean_batch_size",
        "mean_batch_size_worker",
        "mean_batch_size_client",
        "mean_batch_size_per_request",
        "forward_ms_per_image",
        "locust_cpu_s",
        "stack_cpu_s",
        "locust_cpu_ms_per_request",
        "stack_cpu_ms_per_request",
        "pipeline_efficiency",
        "run_dir",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for r in records:
            env = r.env
            values: list[Any] = [
                r.variant,
                r.mode,
                env.get("USE_BATCH_PROCESSING", ""),
                env.get("BATCH_SIZE", ""),
                env.get("BATCH_TIMEOUT", ""),
                env.get("BATCH_POLICY", ""),
                r.users,
                r.repeat,
                " ".join(r.roles),
                r.meta.get("duration_s"),
                r.stats.requests,
                r.stats.failures,
                _error_pct(r),
                r.stats.requests_per_s,
                r.stats.successes_per_s,
                r.stats.mean_ms,
                r.stats.p50_ms,
                r.stats.p95_ms,
                r.stats.p99_ms,
                r.stats.max_ms,
                r.mean_batch,
                r.mean_batch_worker,
                r.mean_batch_client,
                r.mean_batch_per_request,
                r.per_image_ms,
                r.meta.get("locust_cpu_s"),
                r.meta.get("stack_cpu_s"),
                r.cpu_ms_per_request("locust_cpu_s"),
                r.cpu_ms_per_request("stack_cpu_s"),
                pipeline_efficiency(r, ceiling),
                str(r.path),
            ]
            writer.writerow(
                ["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in values]
            )
    return path


def _metric_sources(records: Sequence[RunRecord]) -> str:
    for r in records:
        batch, forward = r.worker_batch_histogram(), r.worker_forward_histogram()
        if batch or forward:
            names = ", ".join(f"`{found[0]}`" for found in (batch, forward) if found)
            return (
                f"Mean batch size and forward time per image come from the worker's Prometheus histograms "
                f"({names}: sum ÷ count over each run), else from the `batch_size` and "
                f"`timings_ms.inference` of the answers."
            )
    return (
        "The worker exported no batch-size histogram, so mean batch size and forward time per image come "
        "from the answers: mean batch size = answers ÷ number of batches they came from "
        "(Σ 1/batch_size), forward time per image = mean of `timings_ms.inference` ÷ `batch_size`."
    )


def _variant_label(plan: Mapping[str, Any], name: str) -> str:
    for v in plan.get("variants") or []:
        if v.get("name") == name:
            env = ", ".join(f"{k}={val}" for k, val in (v.get("env") or {}).items())
            return f"`{name}` ({env})" if env else f"`{name}`"
    return f"`{name}`"


def build_report(run_dir: Path, out: Path) -> ReportResult:
    """Write plots, ``runs.csv`` and the load-comparison section of ``out`` from ``run_dir``."""
    plan = json.loads((run_dir / PLAN_JSON).read_text())
    records = load_runs(run_dir)
    if not records:
        raise ValueError(f"no measured runs under {run_dir / 'runs'}: nothing to report")
    ceiling = read_benchmark(run_dir / BENCHMARK_JSON)
    variants = [v["name"] for v in plan.get("variants") or []] or sorted({r.variant for r in records})
    baseline = plan.get("baseline", variants[0])
    seed_batch = plan.get("seed_batch", next((v for v in variants if v != baseline), baseline))
    assets = out.parent / ASSETS
    result = ReportResult(out)

    result.assets.append(write_runs_csv(records, assets / "runs.csv", ceiling))
    rps = _sweep(records, variants, lambda r: r.stats.requests_per_s)
    p95 = _sweep(records, variants, lambda r: r.stats.p95_ms)
    result.assets.append(
        plots.plot_vs_users(
            rps,
            assets / "throughput_vs_users.png",
            title="Throughput against load",
            ylabel="requests per second",
        )
    )
    result.assets.append(
        plots.plot_vs_users(
            p95,
            assets / "p95_vs_users.png",
            title="Latency, 95th percentile, against load",
            ylabel="latency p95, ms",
        )
    )
    equal = plan.get("equal_users")
    dist_records = {
        v: select(records, variant=v, users=equal) or select(records, variant=v) for v in variants
    }
    distributions = {}
    for v, recs in dist_records.items():
        merged: dict[int, float] = {}
        for r in recs:
            for size, count in r.batch_distribution().items():
                merged[size] = merged.get(size, 0.0) + count
        distributions[v] = merged
    result.assets.append(
        plots.plot_batch_distribution(
            distributions,
            assets / "batch_size_distribution.png",
            title=f"Batch sizes at {equal} users (from the answers' batch_size)" if equal else "Batch sizes",
        )
    )

    repeats = max(r.repeat for r in records)
    lines = [
        "## Load comparison: individual against batch processing",
        "",
        f"Generated by `{plan.get('command', 'python -m loadtest.compare')}` "
        f"({plan.get('started_at', '?')} to {plan.get('finished_at', '?')}). "
        f"Every number below is read from that run's locust CSV files (combined in "
        f"[{ASSETS}/runs.csv]({ASSETS}/runs.csv)); none is typed in. Values are medians over "
        f"{repeats} repeat(s), (min–max) in brackets; variants ran alternately (A B C A B C), each on a "
        f"freshly started stack after a dropped warm-up of {plan.get('warmup_s', '?')} s. Users are closed "
        f"loop (no think time), so users = requests in flight. Latencies are end to end as the client sees "
        f"them, locust's rounding included.",
        "",
        "Variants: " + "; ".join(_variant_label(plan, v) for v in variants) + ".",
        "",
    ]
    seed = plan.get("seed_users") or {}
    seed_cols = {
        "Individual": select(records, variant=baseline, role="seed"),
        "Batch": select(records, variant=seed_batch, role="seed"),
    }
    if seed_cols["Individual"] and seed_cols["Batch"]:
        lines += [
            f"### The guide's test plan: individual with {seed.get('individual')} users, "
            f"batch with {seed.get('batch')} users",
            "",
            f"Individual: {_variant_label(plan, baseline)}. Batch: {_variant_label(plan, seed_batch)}.",
            "",
            _metric_table(seed_cols, "Individual", ceiling, ["Métrica", "Individual", "Batch", "Mejora"]),
            "",
        ]
    equal_cols = {v: recs for v, recs in _by_variant(records, variants, role="equal").items() if recs}
    if equal_cols and baseline in equal_cols:
        others = [v for v in equal_cols if v != baseline]
        lines += [
            f"### Same load for every variant: {equal} users",
            "",
            _metric_table(
                equal_cols,
                baseline,
                ceiling,
                ["Metric", *equal_cols, *(f"{v} against {baseline}" for v in others)],
            ),
            "",
        ]
    lines += [
        "### Throughput and latency against load",
        "",
        table(
            [
                "Users",
                *(f"{v}: requests per second" for v in variants),
                *(f"{v}: latency p95, ms" for v in variants),
            ],
            [
                [str(u)]
                + [fmt_spread(rps[v].get(u), 2) for v in variants]
                + [fmt_spread(p95[v].get(u), 0) for v in variants]
                for u in sorted({r.users for r in records})
            ],
        ),
        "",
        f"![Throughput against users]({ASSETS}/throughput_vs_users.png)",
        "",
        f"![Latency p95 against users]({ASSETS}/p95_vs_users.png)",
        "",
        f"![Batch size distribution]({ASSETS}/batch_size_distribution.png)",
        "",
        "### Efficiency",
        "",
        "The guide's formula: **Eficiencia = (T_individual × Batch_Size) / T_batch**, where T_individual is "
        "the forward time of one image on its own and T_batch the forward time of one batch of Batch_Size "
        "images. In the tables above T_individual is the individual variant's forward time per image, "
        "Batch_Size the variant's mean batch size and T_batch = Batch_Size × its forward time per image.",
        "",
        _metric_sources(records),
        "",
    ]
    if ceiling is not None:
        meta = ", ".join(f"{k} {v}" for k, v in ceiling.meta.items() if k != "command")
        lines += [
            f"Model only (`python -m workers.benchmark`: the forward pass alone, no HTTP, no queue, no "
            f"decoding{'; ' + meta if meta else ''}):",
            "",
            _ceiling_table(ceiling),
            "",
            "**Pipeline efficiency** = end-to-end requests per second ÷ model-only images per second at "
            "the batch size the run actually used (interpolated between measured sizes): the share of the "
            "model's own speed that survives HTTP, decoding and the queue.",
            "",
        ]
    else:
        lines += [
            "The model-only benchmark (`python -m workers.benchmark`) did not produce results in this "
            "run, so pipeline efficiency is not shown.",
            "",
        ]
    errors = plan.get("errors") or []
    if errors:
        lines += ["### Problems during the run", ""] + [f"- {e}" for e in errors] + [""]
    lines += [
        "### Machine",
        "",
        *machine.summary_lines(plan.get("machine") or {}),
        "",
        f"Raw files: `{run_dir}`.",
        "",
    ]

    headline = _headline(seed_cols, equal_cols, baseline, equal)
    result.headline = headline
    if headline:
        lines[4:4] = ["**Throughput:** " + " ".join(headline), ""]
    replace_section(out, SECTION, "\n".join(lines))
    return result


def _headline(
    seed_cols: Mapping[str, Sequence[RunRecord]],
    equal_cols: Mapping[str, Sequence[RunRecord]],
    baseline: str,
    equal: Any,
) -> list[str]:
    """The throughput ratios, with both numbers."""
    out = []

    def ratio(a: Sequence[RunRecord], b: Sequence[RunRecord], label: str) -> None:
        x = _spread(a, lambda r: r.stats.requests_per_s)
        y = _spread(b, lambda r: r.stats.requests_per_s)
        if x and y and x.median > 0:
            out.append(
                f"{label}: {y.median:.2f} against {x.median:.2f} requests per second "
                f"= {y.median / x.median:.2f}×."
            )

    ratio(
        seed_cols.get("Individual", []), seed_cols.get("Batch", []), "Guide's plan, batch against individual"
    )
    for v, recs in equal_cols.items():
        if v != baseline:
            ratio(equal_cols[baseline], recs, f"At {equal} users, {v} against {baseline}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Rebuild the report from a run folder."""
    parser = argparse.ArgumentParser(description="Rebuild the load-comparison report from a run folder.")
    parser.add_argument("run_dir", type=Path, help="folder written by python -m loadtest.compare --csv-dir")
    parser.add_argument(
        "--out", type=Path, default=Path("docs/benchmarks.md"), help="report (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = build_report(args.run_dir, args.out)
    for line in result.headline:
        print(line)
    print(f"wrote {result.out} and {len(result.assets)} files under {result.out.parent / ASSETS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
