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

from .driver import Load, Plan, PlanCLI, alternate, int_list
from .report import ASSETS, fmt, fmt_spread, footer, median, plot_vs_users, preamble, replace_section, table
from .results import Group, RunRecord, Spread, load_plan, select, spread_of, write_runs_csv
from .stack import INDIVIDUAL, Variant, batch_variant

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

    def images_per_s(self, size: float) -> float:
        return size / self.seconds(size)

    def env(self) -> dict[str, str]:
        return {"MODEL": "simulated", "SIMULATED_BATCH_MS": f"{self.batch_ms:g}",
                "SIMULATED_ITEM_MS": f"{self.item_ms:g}"}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Device:
        return cls(config.value("SIMULATED_BATCH_MS", env), config.value("SIMULATED_ITEM_MS", env))


def variants(device: Device, batch_size: int = BATCH_SIZE, batch_timeout: float = BATCH_TIMEOUT_S,
             workers: Sequence[int] = WORKERS) -> list[Variant]:
    """Each mode on one worker, then individual mode on every other count in ``workers`` (``-<n>w``)."""
    if min(workers, default=0) < 1 or batch_size < 1 or batch_timeout <= 0:
        raise ValueError("workers and batch_size must be >= 1 and batch_timeout > 0")
    common = {**device.env(), "WEB_THREADS": str(WEB_THREADS)}
    modes = [INDIVIDUAL, *(batch_variant(f"batch-{p}", batch_size, batch_timeout, p)
                           for p in config.BATCH_POLICIES)]
    return [Variant(v.name, {**common, **v.env, "WORKERS": "1"}) for v in modes] + [
        Variant(f"individual-{n}w", {**common, **INDIVIDUAL.env, "WORKERS": str(n)})
        for n in sorted(set(workers)) if n > 1]


def _workers(r: RunRecord) -> int:
    return int(r.meta.get("workers") or config.value("WORKERS", r.env))


def _max_batch(r: RunRecord) -> int:
    return int(config.value("BATCH_SIZE", r.env)) if r.mode == "batch" else 1


def device_busy(r: RunRecord) -> float | None:
    """Share of the window each device was busy: Σ passes × (a + b·n) over window × workers."""
    if not r.window_s or not (passes := r.batch_distribution()):
        return None
    device = Device.from_env(r.env)
    return sum(count * device.seconds(size) for size, count in passes.items()) / (r.window_s * _workers(r))


def device_ceiling(r: RunRecord) -> float:  # every batch full
    return _workers(r) * Device.from_env(r.env).images_per_s(_max_batch(r))


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


def _most_common(values: Sequence[str]) -> str:
    return max(dict.fromkeys(values), key=values.count)


def _busiest_text(runs: Sequence[RunRecord]) -> str:
    if not (found := [b[0] for r in runs if (b := r.busiest()) is not None]):
        return "—"
    name = _most_common(found)
    cores = spread_of(runs, lambda r: r.cpu_by_tree[name] / r.window_s
                      if name in r.cpu_by_tree and r.window_s else None)
    return f"{name} {fmt(median(cores), 2)}"


def _served(r: RunRecord) -> float:  # the report's requests/s: successful answers only
    return r.stats.successes_per_s


def served(g: Group) -> Spread | None:
    return g.of(_served)


def verdict(g: Group, cores: int) -> str:  # the most common bound over repeats
    return _most_common([bound(r, cores) for r in g.runs])


def _cpu_ms(g: Group, group: str | None = None) -> float | None:  # of a group of trees, None: all
    return median(g.of(lambda r: r.cpu_ms(None if group is None else _GROUPS[group])))


def ratio_users_of(users: Sequence[int]) -> int:  # where the targets are read
    return RATIO_USERS if RATIO_USERS in users else max(users)


def paired_ratio(records: Sequence[RunRecord], variant: str, baseline: str, users: int) -> Spread | None:
    """Successful requests/s of ``variant`` ÷ ``baseline``, one ratio per repeat (they ran back to back)."""
    def rps(name: str) -> dict[int, float]:
        return {r.repeat: r.stats.successes_per_s for r in select(records, variant=name, users=users)}
    num, den = rps(variant), rps(baseline)
    if not (ratios := [num[k] / den[k] for k in sorted(num.keys() & den.keys()) if den[k] > 0]):
        return None
    return Spread(statistics.median(ratios), min(ratios), max(ratios), len(ratios))


def bend(points: Mapping[int, Group]) -> int | None:
    """The fewest users whose throughput is within NEAR of the curve's top: where it stops climbing."""
    if not (rates := {u: rps.median for u, p in points.items() if (rps := served(p)) is not None}):
        return None
    return min(u for u, rate in rates.items() if rate >= NEAR * max(rates.values()))


Summary = Mapping[str, Mapping[int, Group]]


def _rps(summary: Summary, name: str, users: int) -> float | None:
    return None if (point := summary.get(name, {}).get(users)) is None else median(served(point))


def _ratio_text(value: Spread | None) -> str:
    return "—" if value is None else f"×{fmt_spread(value, 2)}"


def render_targets(records: Sequence[RunRecord], summary: Summary, cores: int,
                   ratio_users: int = RATIO_USERS) -> str:
    """Each batch mode ÷ individual, each N-worker variant ÷ its one worker, at ``ratio_users``."""
    def row(name: str, base: str, label: str, target: float, target_text: str, note: str = "") -> list[str]:
        ratio = paired_ratio(records, name, base, ratio_users)
        both = f"{fmt(_rps(summary, name, ratio_users))} ÷ {fmt(_rps(summary, base, ratio_users))}"
        met = "not measured" if ratio is None else "yes" if ratio.median >= target else "no"
        return [label, str(ratio_users), f"{_ratio_text(ratio)} ({both} requests/s)", target_text, met + note]

    rows = []
    for name, points in summary.items():
        if (point := points.get(ratio_users)) is None:
            continue
        workers = _workers(point.runs[0])
        if name.startswith("batch-") and workers == 1:
            rows.append(row(name, "individual", f"{name} ÷ individual", BATCH_TARGET, f"≥ ×{BATCH_TARGET:g}"))
        elif workers > 1:
            one, target = name.rsplit("-", 1)[0], SCALE_TARGET * workers / 2  # 90 % of linear
            note = " (at the CPU ceiling)" if verdict(point, cores) == "CPU" else ""
            rows.append(row(name, one, f"{name} ÷ {one} ({workers} workers ÷ 1)", target,
                            f"≥ ×{target:g} until the CPU ceiling", note))
    return table(["Comparison", "Users", "Measured (median, range over repeats)", "Target", "Met"], rows)


def render_users_table(summary: Summary) -> str:
    def cells(u: int, text: Callable[[Group], str]) -> list[str]:
        return ["—" if (p := summary[n].get(u)) is None else text(p) for n in summary]
    return table(["Users", *(f"{n}: requests/s" for n in summary), *(f"{n}: p50 / p95, ms" for n in summary)],
                 [[str(u), *cells(u, lambda p: fmt_spread(served(p), 1)),
                   *cells(u, lambda p: f"{fmt(median(p.of(lambda r: r.stats.p50_ms)), 0)} / "
                                       f"{fmt(median(p.p95), 0)}")]
                  for u in sorted({u for points in summary.values() for u in points})])


def render_scale_out(records: Sequence[RunRecord], summary: Summary, cores: int,
                     one: str = "individual") -> str:
    """Requests/s with 1, 2, 4 .. workers, each ÷ one worker (paired by repeat), and what bounds it."""
    scaled = sorted((_workers(next(iter(points.values())).runs[0]), name) for name, points in summary.items()
                    if name.startswith(f"{one}-") and points)
    header = ["Users", f"1 worker: requests/s ({one})"]
    for n, _ in scaled:
        header += [f"{n} workers: requests/s", f"{n} ÷ 1", f"{n} workers: bound by"]
    rows = []
    for u in sorted(summary.get(one, {})):
        row = [str(u), fmt_spread(served(summary[one][u]), 1)]
        for _, name in scaled:
            p = summary[name].get(u)
            row += [fmt_spread(served(p), 1) if p else "—", _ratio_text(paired_ratio(records, name, one, u)),
                    verdict(p, cores) if p else "—"]
        rows.append(row)
    return table(header, rows)


def render_bends(summary: Summary, cores: int) -> str:
    """Per variant: where throughput stops climbing and, at the most users, why (ceilings, evidence)."""
    rows = []
    for name, points in summary.items():
        knee, top = bend(points), points[max(points)]
        busy = median(top.of(device_busy))
        rows.append([name, "—" if knee is None else str(knee),
                     fmt(None if knee is None else median(served(points[knee]))), str(top.users),
                     fmt(device_ceiling(top.runs[0]), 0),
                     fmt(median(top.of(lambda r: cpu_ceiling(r, cores))), 0),
                     verdict(top, cores), fmt(None if busy is None else 100 * busy, 0),
                     fmt(median(top.of(lambda r: r.cores_busy())), 2), _busiest_text(top.runs),
                     fmt(_cpu_ms(top)), " / ".join(fmt(_cpu_ms(top, g)) for g in _GROUPS),
                     fmt(median(top.of(lambda r: r.mean_batch)))])
    return table(["Variant", "Bends at, users", "requests/s there", "At users", "Device ceiling, requests/s",
                  "CPU ceiling, requests/s", "Bound by", "Device busy, %", "Cores busy",
                  "Busiest process, cores", "CPU per request, ms",
                  "of which web / workers / Redis / locust, ms", "Mean batch"], rows)


def _why(summary: Summary, cores: int) -> list[str]:
    lines = []
    for name, points in summary.items():
        top = points[max(points)]
        run, busy, limit = top.runs[0], fmt(median(top.of(lambda r: r.cores_busy())), 2), verdict(top, cores)
        reasons = {
            "device": f"the device is the limit: {_workers(run)} × n ÷ (a + b·n) with n = "
                      f"{_max_batch(run)} is {fmt(device_ceiling(run), 0)} requests/s",
            "CPU": f"the cores are the limit: {fmt(_cpu_ms(top))} ms of CPU per request "
                   f"with {busy} cores busy",
            "neither": "neither the device nor a core is full: few requests in flight, or they wait inside "
                       "the stack"}
        process = (f"one process is the limit: {_busiest_text(top.runs)} cores (its GIL), with {busy} "
                   "cores busy")
        reason = reasons.get(limit, process if limit.endswith(" process") else "?")
        lines.append(f"- `{name}` bends at {bend(points)} users; at {top.users} users {reason}.")
    return lines


def build_report(run_dir: Path, out: Path) -> list[str]:
    plan, records, order = load_plan(run_dir)
    cores = int((plan.get("machine") or {}).get("logical_cpus") or os.cpu_count() or 1)
    summary = Group.by_variant(records, order)
    assets = out.parent / ASSETS
    write_runs_csv(records, assets / _CSV, [
        ("simulated_batch_ms", lambda r: Device.from_env(r.env).batch_ms),
        ("simulated_item_ms", lambda r: Device.from_env(r.env).item_ms), ("device_busy", device_busy),
        *((f"cpu_ms_per_request_{g}_group", lambda r, g=g: r.cpu_ms(_GROUPS[g])) for g in ("web", "workers")),
        ("device_ceiling_per_s", device_ceiling)])
    for what, get, ylabel in (("throughput", _served, "successful requests per second"),
                              ("p95", lambda r: r.stats.p95_ms, "latency p95, ms")):
        plot_vs_users(summary, get, assets / f"accelerator_{what}_vs_users.png",
                      title=f"Simulated accelerator: {what} against load", ylabel=ylabel)
    device = plan.get("device") or {}
    targets = render_targets(records, summary, cores, ratio_users_of(sorted({r.users for r in records})))
    why = _why(summary, cores)
    lines = [
        "## Simulated accelerator: where batching pays, and scale-out", "",
        preamble(plan, records, "accelerator", _CSV), "", *(f"{note}\n" for note in plan.get("notes") or []),
        f"Every worker runs `MODEL=simulated`: one device per worker process, a batch of n images costs "
        f"a + b·n = {device.get('batch_ms', '?')} + {device.get('item_ms', '?')}·n ms. Batch mode: "
        f"BATCH_SIZE={plan.get('batch_size')}, BATCH_TIMEOUT={plan.get('batch_timeout')} s; "
        f"WEB_THREADS={WEB_THREADS} in every variant. Requests/s count successful answers only.", "",
        "### Targets", "", targets, "",
        "### Throughput and latency against load", "", render_users_table(summary), "",
        f"![Throughput against users]({ASSETS}/accelerator_throughput_vs_users.png)", "",
        f"![Latency p95 against users]({ASSETS}/accelerator_p95_vs_users.png)", "",
        "### Scale-out: individual mode with more workers on one queue", "",
        render_scale_out(records, summary, cores), "",
        "### Where each curve bends, and why", "", render_bends(summary, cores), "",
        "**Device ceiling** = workers × n ÷ (a + b·n), n the largest batch the mode allows; **CPU "
        "ceiling** = cores ÷ the CPU one request cost (every process tree, `/proc` over locust's window); a "
        "**process** ceiling is the run with its busiest tree at one full core. Within "
        f"{NEAR:.0%} of the lowest ceiling a run is bound by it, else by **neither**. **Bends at**: the "
        f"fewest users within {NEAR:.0%} of the top.",
        "", *why, "", *footer(plan, run_dir)]
    replace_section(out, SECTION, "\n".join(lines))
    return [line.removeprefix("- ") for line in why] + [f"targets:\n{targets}"]


def _arguments(add: Callable[..., Any]) -> None:
    add("--duration", type=float, help="measured seconds per user count (8)")
    add("--users", type=int_list, help=f"user counts ({','.join(map(str, USERS))})")
    add("--workers", type=int_list, help=f"worker counts of the scale-out ({','.join(map(str, WORKERS))})")
    add("--batch-size", type=int, default=BATCH_SIZE, help="BATCH_SIZE (%(default)s)")
    add("--batch-timeout", type=float, default=BATCH_TIMEOUT_S, help="BATCH_TIMEOUT s (%(default)s)")


def _plan(args: argparse.Namespace) -> Plan:
    device = Device(config.value("SIMULATED_BATCH_MS"), config.value("SIMULATED_ITEM_MS"))
    chosen = variants(device, args.batch_size, args.batch_timeout, args.workers)
    record = {"users": args.users, "duration_s": args.duration, "workers": args.workers,
              "batch_size": args.batch_size, "batch_timeout": args.batch_timeout, "device": asdict(device),
              "ratio_users": ratio_users_of(args.users)}
    loads = tuple(Load(u, args.duration, None, ("sweep",)) for u in sorted(set(args.users)))
    return Plan("accelerator", alternate(chosen, loads, args.repeats), record, build_report)


cli = PlanCLI("accelerator", __doc__ or "", _arguments, {
    "warmup": (1.0, 4.0), "duration": (2.0, 8.0), "users": ([1, 4], list(USERS)),
    "workers": ([1, 2], list(WORKERS))}, _plan)
main = cli.main

if __name__ == "__main__":
    raise SystemExit(main())
