"""Compare this project with its peers under one load, CPU per request included (``make compare-peers``).

This project in individual and batch mode, LitServe with its own batching, and a plain Flask + Celery
pipeline (one task per image), all with the same model, preprocessing and load, then one user.
``--baseline REV`` adds this project at an earlier commit, run from a git worktree: a before/after.
"""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import config
from common.repository import BUILT_IN_DEFAULT
from deploy.stack import ROOT

from . import stack
from .driver import Load, Plan, PlanCLI, ServerFactory, Session, alternate
from .peer_servers.venv import ensure_venv
from .report import Measure, publish, ratio, spread_cells, table
from .results import SERVER_TREES, Group, RunRecord, load_plan

SECTION = "peers"
#: In the order they alternate; ``individual`` is the baseline of the ratios.
VARIANT_NAMES = ("individual", "batch-adaptive", "litserve", "plain-celery")
#: Models to choose from, with the weights each runs with (None: its own).
MODELS: dict[str, str | None] = {"efficientnet_lite0": None, "mobilenet_v3_small": "random", "null": None}
#: CPU accounting's process trees, in table order, with their column names.
CPU_GROUPS = {"web": "web (gunicorn)", "nginx": "nginx", "worker": "worker", "redis": "Redis",
              "litserve": "LitServe server", "locust": "load generator (locust)"}
LITSERVE_VENV = Path("run/peers/litserve-venv")  # run/ is git-ignored
BASELINE_DIR = ROOT / "run" / "peers" / "baseline"  #: a worktree per ``--baseline`` commit, kept
LITSERVE_BATCH_TIMEOUT_S = 0.05
#: The tables' columns at the plan's users (the performance table adds the one-user p50 and a ratio).
PERFORMANCE: tuple[Measure, ...] = (
    ("Latency p50, ms", lambda r: r.stats.p50_ms, 0), ("Latency p95, ms", lambda r: r.stats.p95_ms, 0),
    ("Errors, %", lambda r: r.stats.error_percent, 2))
CPU: tuple[Measure, ...] = (
    *((f"{name}, CPU ms per request", lambda r, g=g: r.cpu_ms((g,)), 1) for g, name in CPU_GROUPS.items()),
    ("All server processes, CPU ms per request", lambda r: r.cpu_ms(SERVER_TREES), 1),
    ("Server CPU, cores busy", lambda r: r.cores_busy(SERVER_TREES), 2),
    ("Everything else on the machine, cores busy", lambda r: r.others_busy(), 2))


@dataclass(frozen=True)
class PeerVariant:
    """One server to measure; ``mode`` says how it starts: ``project``, ``litserve`` or ``plain-celery``."""
    name: str
    mode: str
    label: str
    env: Mapping[str, str] = field(default_factory=dict)  #: the project's settings
    root: Path | None = None  #: where the project's code runs from (None: this checkout)

    @property
    def meta(self) -> dict[str, str]:  # what each run's run.json adds
        return {"label": self.label}


def baseline_root(revision: str, parent: Path = BASELINE_DIR) -> Path:
    """Where ``--baseline REV`` runs from: a worktree named by the commit's abbreviated hash."""
    found = subprocess.run(["git", "rev-parse", "--short", f"{revision}^{{commit}}"], cwd=ROOT,
                           capture_output=True, text=True, check=False)
    if found.returncode != 0:
        raise ValueError(f"--baseline {revision}: not a commit ({found.stderr.strip()})")
    return parent / found.stdout.strip()


def variants(names: Sequence[str] = VARIANT_NAMES, batch_size: int = 4, batch_timeout: float = 2.0,
             baseline: Path | None = None) -> list[PeerVariant]:
    """The variants to compare, by name, in the order given (``baseline`` only with its worktree)."""
    batch = stack.batch_variant("batch-adaptive", batch_size, batch_timeout, "adaptive").env
    known = {v.name: v for v in (
        PeerVariant("individual", "project", "this project, individual mode", stack.INDIVIDUAL.env),
        PeerVariant("batch-adaptive", "project", f"this project, batch mode: BATCH_SIZE {batch_size}, "
                    f"BATCH_POLICY adaptive, BATCH_TIMEOUT {batch_timeout:g} s", batch),
        PeerVariant("batch-inline", "project", "batch-adaptive with IMAGES_BY_REFERENCE=false: each image "
                    "inside its task message", {**batch, "IMAGES_BY_REFERENCE": "false"}),
        PeerVariant("litserve", "litserve", f"LitServe 0.2.19: max_batch_size {batch_size}, batch_timeout "
                    f"{LITSERVE_BATCH_TIMEOUT_S:g} s, 1 inference worker, 1 API server"),
        PeerVariant("plain-celery", "plain-celery", "Flask under gunicorn (gthread, 64 threads) sending one "
                    "Celery task per image, Celery worker prefork × 2"),
        *([PeerVariant("baseline", "project", f"batch-adaptive as of git {baseline.name}, run from a "
                       "worktree of that commit", batch, baseline)] if baseline else []))}
    if not names or (unknown := [n for n in names if n not in known]):
        raise ValueError(f"unknown variants {list(names) and unknown}: use some of {list(known)}")
    return [known[n] for n in names]


def server_factory(model: stack.ModelSettings, batch_size: int, flush: bool) -> ServerFactory:
    """Start each session's variant: this project's stack (at its commit), LitServe or the plain pipeline."""
    def make(session: Session, redis_url: str, log_dir: Path) -> stack.Server:
        variant = session.variant
        if variant.mode == "project":
            return stack.Stack(stack.Variant(variant.name, variant.env), redis_url=redis_url, log_dir=log_dir,
                               flush=flush, project_root=variant.root or ROOT, env=model.env())
        if variant.mode == "litserve":  # the first use makes the virtualenv: minutes, not measured
            python = ensure_venv(LITSERVE_VENV, log_path=log_dir / "litserve-venv.log")
            return stack.LitServeServer(python, model, log_dir=log_dir, max_batch_size=batch_size,
                                        batch_timeout=LITSERVE_BATCH_TIMEOUT_S)
        return stack.PlainCeleryServer(model, redis_url=redis_url, log_dir=log_dir, flush=flush)
    return make


#: A variant's runs at the plan's users and at one user.
Row = tuple[Group, Group]


def summarize(records: Sequence[RunRecord], names: Sequence[str], users: int) -> list[Row]:
    """A row per variant in ``names`` that ran."""
    found = Group.by_variant(records)
    return [(v.get(users) or Group(n, users, []), v.get(1) or Group(n, 1, [])) for n in names
            if (v := found.get(n))]


def render_performance_table(rows: Sequence[Row], users: int, baseline: str = "individual") -> str:
    """Throughput, latency and errors at ``users``, the one-user p50, and throughput against the baseline."""
    base = next((r[0] for r in rows if r[0].variant == baseline), None)
    rps: Measure = (f"Requests per second ({users} users)", lambda r: r.stats.requests_per_s, 2)
    one_user: Measure = ("Latency p50 at 1 user, ms", lambda r: r.stats.p50_ms, 0)
    return table(["Variant", *(c[0] for c in (rps, *PERFORMANCE, one_user)),
                  f"Requests per second against {baseline}"],
                 [[f"`{r.variant}`", *spread_cells(r.runs, (rps, *PERFORMANCE)),
                   *spread_cells(one.runs, (one_user,)),
                   "—" if r is base or base is None else ratio(r.rps, base.rps)] for r, one in rows])


def render_cpu_table(rows: Sequence[Row]) -> str:
    """CPU milliseconds per request of each process tree; how busy the servers kept the cores."""
    return table(["Variant", *(c[0] for c in CPU)], [[f"`{r.variant}`", *spread_cells(r.runs, CPU)]
                                                      for r, _ in rows])


def build_report(run_dir: Path, out: Path) -> list[str]:
    """Write the section and its CSV from ``run_dir``'s files; the console lines (ValueError: no runs)."""
    plan, records, _ = load_plan(run_dir)
    users, model = int(plan["users"]), plan["model"]
    rows = summarize(records, plan.get("variant_names") or VARIANT_NAMES, users)
    name = SECTION if model == BUILT_IN_DEFAULT else f"{SECTION}-{model}"  # one per model
    performance, cpu = render_performance_table(rows, users), render_cpu_table(rows)
    publish(out, name, run_dir, plan, records, f"{name}.csv",
            f"## Peers: this project against LitServe and a plain Flask + Celery pipeline ({model})", [
        f" Measured with {users} users for {plan['duration_s']:g} s, then 1 user for "
        f"{plan['one_user_duration_s']:g} s.", "",
        f"Same for every variant: the model `{model}` ({plan.get('model_weights') or 'its own weights'}), "
        "the project's decoding and preprocessing (imported, not copied), the photos and the locustfile; "
        "torch threads per forward pass = cores ÷ forward passes at once. The project adds admission "
        "control, deadlines, validation and metrics; the plain pipeline has none of those.", "",
        "Variants: " + "; ".join(f"`{r.variant}`: {(r.runs or one.runs)[0].meta.get('label', r.variant)}"
                                 for r, one in rows) + ".", "",
        f"### Throughput and latency at {users} users", "", performance, "",
        f"### CPU per request at {users} users", "", cpu, "",
        "CPU (`loadtest/driver.py`): utime + stime of each process tree (every thread and descendant ever "
        "seen) from `/proc/<pid>/stat` every 0.25 s, over locust's measured window, ÷ the requests locust "
        "counted. \"Everything else\" is the machine's busy time (`/proc/stat`) less every process "
        "above: well above 0.1, that round was disturbed.", ""],
            [("label", lambda r: r.meta.get("label")), ("model", lambda r: model)])
    return [performance, cpu]


def _arguments(add: Callable[..., Any]) -> None:
    add("--duration", type=float, help="measured seconds at --users (30)")
    add("--one-user-duration", type=float, help="measured seconds at 1 user (10)")
    add("--users", type=int, help="closed-loop users (20)")
    add("--model", default=BUILT_IN_DEFAULT, choices=sorted(MODELS), help="every variant's (%(default)s)")
    add("--variants", default=",".join(VARIANT_NAMES), help="a subset of %(default)s, batch-inline")
    add("--batch-size", type=int, default=config.value("BATCH_SIZE"), help="also LitServe's max_batch_size")
    add("--batch-timeout", type=float, default=config.value("BATCH_TIMEOUT"), help="of batch-adaptive, s")
    add("--baseline", metavar="REV", help="adds `baseline`: batch-adaptive from a worktree of git REV")


def _plan(args: argparse.Namespace) -> Plan:
    if args.users < 1 or args.batch_size < 1:
        raise ValueError("--users and --batch-size must be >= 1")
    baseline = None if args.baseline is None else baseline_root(args.baseline)
    model = stack.ModelSettings(args.model, MODELS[args.model], bool(config.value("MODEL_JIT")))
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    chosen = variants(names, args.batch_size, args.batch_timeout, baseline)
    if baseline and args.report is None and "baseline" in names and not (baseline / "webapp").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", "--force", str(baseline), baseline.name],
                       cwd=ROOT, check=True, capture_output=True, text=True)
    loads = (Load(args.users, args.duration, roles=("load",)),
             Load(1, args.one_user_duration, roles=("one-user",)))
    record = {"variant_names": [v.name for v in chosen], "users": args.users, "duration_s": args.duration,
              "one_user_duration_s": args.one_user_duration, "model": model.name,
              "model_weights": model.weights, "batch_size": args.batch_size}
    return Plan("peers", alternate(chosen, loads, args.repeats), record, build_report,
                server_factory(model, args.batch_size, not args.keep_db))


cli = PlanCLI("peers", __doc__ or "", _arguments, {
    "duration": (4.0, 30.0), "one_user_duration": (3.0, 10.0), "users": (4, 20)}, _plan)
main = cli.main

if __name__ == "__main__":
    raise SystemExit(main())
