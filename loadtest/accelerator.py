"""Batching where a device makes it pay, and more workers on one queue (``make bench-accelerator``).

``MODEL=simulated`` gives each worker a stand-in device on which a batch of n images costs a + b·n ms:
individual mode pays the fixed cost per image, a full batch once. Each mode on one worker, and
individual mode on more workers, over a sweep of users: where each curve bends, and why.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import config

from . import compare
from .driver import Load, Plan, PlanCLI, alternate, int_list
from .report import ASSETS, fmt, fmt_spread, median, plot_vs_users, publish, table, users_table
from .results import COLUMNS, Group, RunRecord, Spread, load_plan, select, spread_of
from .stack import INDIVIDUAL, Variant

SECTION, _CSV = "accelerator", "accelerator_runs.csv"
USERS, WORKERS = (1, 2, 4, 8, 16, 32, 64), (1, 2, 4)
#: At RATIO_USERS a batch this size fills; waiting longer than the device's fixed cost never pays.
BATCH_SIZE, BATCH_TIMEOUT_S = 16, 0.02
WEB_THREADS = 96  #: the most users wait at once in the one gunicorn process (it admits WEB_THREADS - 4)
#: The issue's targets: batch ÷ individual at RATIO_USERS; 2 workers ÷ 1 below the CPU ceiling.
RATIO_USERS, BATCH_TARGET, SCALE_TARGET = 32, 3.0, 1.8
#: A run within this share of its lowest ceiling is bound by it; a curve within it of its top has bent.
NEAR = 0.85
_GROUPS = {"web": ("web", "nginx"), "workers": ("worker",), "redis": ("redis",), "locust": ("locust",)}


@dataclass(frozen=True)
class Device:
    """The simulated accelerator: a batch of n images takes ``batch_ms + item_ms × n``."""
    batch_ms: float
    item_ms: float

    def __post_init__(self) -> None:
        if self.batch_ms < 0 or self.item_ms < 0 or self.batch_ms + self.item_ms <= 0:
            raise ValueError(f"a Device needs batch_ms, item_ms >= 0, not both 0; got {self}")

    def seconds(self, size: float) -> float:
        return (self.batch_ms + self.item_ms * size) / 1000.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Device:
        return cls(config.value("SIMULATED_BATCH_MS", env), config.value("SIMULATED_ITEM_MS", env))


def variants(device: Device, workers: Sequence[int] = WORKERS) -> list[Variant]:
    """Each mode on one worker, then individual mode on every other count in ``workers`` (``-<n>w``)."""
    common = {"MODEL": "simulated", "SIMULATED_BATCH_MS": f"{device.batch_ms:g}",
              "SIMULATED_ITEM_MS": f"{device.item_ms:g}", "WEB_THREADS": str(WEB_THREADS)}
    modes = compare.variants(BATCH_SIZE, BATCH_TIMEOUT_S)  # the baseline, then each BATCH_POLICY
    return [Variant(v.name, {**common, **v.env, "WORKERS": "1"}) for v in modes] + [
        Variant(f"individual-{n}w", {**common, **INDIVIDUAL.env, "WORKERS": str(n)})
        for n in sorted(set(workers)) if n > 1]


def _workers(r: RunRecord) -> int:
    return int(r.meta.get("workers") or config.value("WORKERS", r.env))


def device_busy(r: RunRecord) -> float | None:
    """Share of the window each device was busy: Σ passes × (a + b·n) over window × workers."""
    if not r.window_s or not (passes := r.batch_distribution()):
        return None
    device = Device.from_env(r.env)
    return sum(count * device.seconds(size) for size, count in passes.items()) / (r.window_s * _workers(r))


def device_ceiling(r: RunRecord) -> float:  # every batch full: the largest the mode allows
    n = int(config.value("BATCH_SIZE", r.env)) if r.mode == "batch" else 1
    return _workers(r) * n / Device.from_env(r.env).seconds(n)


def cpu_ceiling(r: RunRecord, cores: int) -> float | None:  # at this run's CPU per request
    return cores * 1000.0 / per_request if (per_request := r.cpu_ms()) else None


def bound(r: RunRecord, cores: int) -> str:
    """What limits a run serving within NEAR of its lowest ceiling: ``device``, ``CPU`` (every core) or
    ``<name> process`` (one tree at one core: its GIL); else ``neither``."""
    ceilings = {"device": device_ceiling(r), "CPU": cpu_ceiling(r, cores)}
    if (top := r.busiest()) is not None and top[1] > 0:
        ceilings[f"{top[0]} process"] = r.stats.successes_per_s / top[1]
    if not (known := {k: v for k, v in ceilings.items() if v}):
        return "?"
    name = min(known, key=lambda k: known[k])
    return name if r.stats.successes_per_s >= NEAR * known[name] else "neither"


def verdict(g: Group, cores: int) -> str:  # the most common bound over repeats
    return statistics.mode([bound(r, cores) for r in g.runs])


def _busiest_text(runs: Sequence[RunRecord]) -> str:
    if not (found := [b[0] for r in runs if (b := r.busiest()) is not None]):
        return "—"
    name = statistics.mode(found)
    cores = spread_of(runs, lambda r: r.cpu_by_tree[name] / r.window_s
                      if name in r.cpu_by_tree and r.window_s else None)
    return f"{name} {fmt(median(cores), 2)}"


_served = COLUMNS["successes_per_s"]  #: the report's requests/s: successful answers only


def _cpu_ms(g: Group, group: str | None = None) -> float | None:  # of a group of trees, None: all
    return median(g.of(lambda r: r.cpu_ms(None if group is None else _GROUPS[group])))


def paired_ratio(records: Sequence[RunRecord], variant: str, baseline: str, users: int) -> Spread | None:
    """Successful requests/s of ``variant`` ÷ ``baseline``, one ratio per repeat (they ran back to back)."""
    base = {r.repeat: _served(r) for r in select(records, variant=baseline, users=users)}
    return spread_of(select(records, variant=variant, users=users),
                     lambda r: _served(r) / base[r.repeat] if base.get(r.repeat) else None)


def bend(points: Mapping[int, Group]) -> int | None:
    """The fewest users whose throughput is within NEAR of the curve's top: where it stops climbing."""
    if not (rates := {u: rps.median for u, p in points.items() if (rps := p.of(_served)) is not None}):
        return None
    return min(u for u, rate in rates.items() if rate >= NEAR * max(rates.values()))


Summary = Mapping[str, Mapping[int, Group]]


def render_targets(records: Sequence[RunRecord], summary: Summary, cores: int, users: int) -> str:
    """Each batch mode and each N-worker variant ÷ individual mode on one worker, at ``users``."""
    rows = []
    for name, points in summary.items():
        if name == "individual" or (point := points.get(users)) is None:
            continue
        workers = _workers(point.runs[0])
        target = BATCH_TARGET if workers == 1 else SCALE_TARGET * workers / 2  # 90 % of linear
        ratio = paired_ratio(records, name, "individual", users)
        met = "not measured" if ratio is None else "yes" if ratio.median >= target else "no"
        capped = workers > 1 and verdict(point, cores) == "CPU"
        rows.append([f"{name} ÷ individual", str(users), "—" if ratio is None else f"×{fmt_spread(ratio, 2)}",
                     f"≥ ×{target:g}" + (" until the CPU ceiling" if workers > 1 else ""),
                     met + (" (at the CPU ceiling)" if capped else "")])
    return table(["Comparison", "Users", "Measured (median, range over repeats)", "Target", "Met"], rows)


def render_users_table(summary: Summary, cores: int) -> str:
    """Per user count, each variant's requests/s, latency and what bounds it."""
    return users_table(summary, list(summary), [
        ("requests/s", lambda p: fmt_spread(p.of(_served), 1)),
        ("p50 / p95, ms", lambda p: f"{fmt(median(p.of(COLUMNS['p50_ms'])), 0)} / {fmt(median(p.p95), 0)}"),
        ("bound by", lambda p: verdict(p, cores))])


def render_bends(summary: Summary, cores: int) -> str:
    """Per variant: where throughput stops climbing and, at the most users, why (ceilings, evidence)."""
    rows = []
    for name, points in summary.items():
        knee, top = bend(points), points[max(points)]
        busy = median(top.of(device_busy))
        rows.append([name, "—" if knee is None else str(knee), str(top.users),
                     fmt(device_ceiling(top.runs[0]), 0),
                     fmt(median(top.of(lambda r: cpu_ceiling(r, cores))), 0),
                     verdict(top, cores), fmt(None if busy is None else 100 * busy, 0),
                     fmt(median(top.of(lambda r: r.cores_busy())), 2), _busiest_text(top.runs),
                     fmt(_cpu_ms(top)), " / ".join(fmt(_cpu_ms(top, g)) for g in _GROUPS),
                     fmt(median(top.of(lambda r: r.mean_batch)))])
    return table(["Variant", "Bends at, users", "At users", "Device ceiling, requests/s",
                  "CPU ceiling, requests/s", "Bound by", "Device busy, %", "Cores busy",
                  "Busiest process, cores", "CPU per request, ms",
                  "of which web / workers / Redis / locust, ms", "Mean batch"], rows)


def build_report(run_dir: Path, out: Path) -> list[str]:
    plan, records, order = load_plan(run_dir)
    cores = int((plan.get("machine") or {}).get("logical_cpus") or os.cpu_count() or 1)
    summary = Group.by_variant(records, order)
    for what, get, ylabel in (("throughput", _served, "successful requests per second"),
                              ("p95", COLUMNS["p95_ms"], "latency p95, ms")):
        plot_vs_users(summary, get, out.parent / ASSETS / f"accelerator_{what}_vs_users.png",
                      title=f"Simulated accelerator: {what} against load", ylabel=ylabel)
    device, users = plan.get("device") or {}, {r.users for r in records}
    targets = render_targets(records, summary, cores, RATIO_USERS if RATIO_USERS in users else max(users))
    bends = render_bends(summary, cores)
    lines = [
        "", "", *(f"{note}\n" for note in plan.get("notes") or []),
        f"Every worker runs `MODEL=simulated`: one device per worker process, a batch of n images costs "
        f"a + b·n = {device.get('batch_ms', '?')} + {device.get('item_ms', '?')}·n ms. Batch mode: "
        f"BATCH_SIZE={plan.get('batch_size')}, BATCH_TIMEOUT={plan.get('batch_timeout')} s; "
        f"WEB_THREADS={WEB_THREADS} in every variant. Requests/s count successful answers only.", "",
        "### Targets", "", targets, "",
        "### Throughput, latency and bound against load", "", render_users_table(summary, cores), "",
        f"![Throughput against users]({ASSETS}/accelerator_throughput_vs_users.png)", "",
        f"![Latency p95 against users]({ASSETS}/accelerator_p95_vs_users.png)", "",
        "### Where each curve bends, and why", "", bends, "",
        "**Device ceiling** = workers × n ÷ (a + b·n), n the largest batch the mode allows; **CPU "
        "ceiling** = cores ÷ CPU per request (every process tree, `/proc` over locust's window); "
        f"**process**: its busiest tree at one full core (its GIL). A run within {NEAR:.0%} of its lowest "
        f"ceiling is bound by it, else by **neither**. **Bends at**: the fewest users within {NEAR:.0%} of "
        "the top.", ""]
    publish(out, SECTION, run_dir, plan, records, _CSV,
            "## Simulated accelerator: where batching pays, and scale-out", lines,
            [("device_busy", device_busy), ("device_ceiling_per_s", device_ceiling)])
    return [targets, bends]


def _arguments(add: Callable[..., Any]) -> None:
    add("--duration", type=float, help="measured seconds per user count (8)")
    add("--users", type=int_list, help=f"user counts ({','.join(map(str, USERS))})")
    add("--workers", type=int_list, help=f"worker counts of the scale-out ({','.join(map(str, WORKERS))})")


def _plan(args: argparse.Namespace) -> Plan:
    device = Device(config.value("SIMULATED_BATCH_MS"), config.value("SIMULATED_ITEM_MS"))
    chosen = variants(device, args.workers)
    record = {"users": args.users, "duration_s": args.duration, "workers": args.workers,
              "batch_size": BATCH_SIZE, "batch_timeout": BATCH_TIMEOUT_S, "device": asdict(device)}
    loads = tuple(Load(u, args.duration, None, ("sweep",)) for u in sorted(set(args.users)))
    return Plan("accelerator", alternate(chosen, loads, args.repeats), record, build_report)


cli = PlanCLI("accelerator", __doc__ or "", _arguments, {
    "warmup": (1.0, 4.0), "duration": (2.0, 8.0), "users": ([1, 4], list(USERS)),
    "workers": ([1, 2], list(WORKERS))}, _plan)
main = cli.main

if __name__ == "__main__":
    raise SystemExit(main())
