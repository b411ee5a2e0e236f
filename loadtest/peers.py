"""Compare this project with its peers under one load, CPU per request included (``make compare-peers``).

Four variants, alternating A B C D A B C D over ``--repeats`` rounds, each started fresh: this
project in individual mode and in batch mode (``BATCH_POLICY=adaptive``), LitServe 0.2.19 with
its own batching, and a plain Flask + Celery pipeline (one task per image). All serve the same
model with the same preprocessing (``workers.model``, ``workers.preprocess``) and get the same
load: the locustfile's ``PhotoUploader`` (FastHttpUser, closed-loop users, the bundled photos),
after a dropped warm-up, then one user. Per variant: requests per second, p50/p95 latency,
errors, and CPU milliseconds per request of each process tree (web, worker, Redis, LitServe,
the load generator) from ``/proc`` over locust's measured window (``loadtest.cpu``). Writes the
``peers`` section of ``docs/benchmarks.md`` and ``docs/benchmarks/peers.csv``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import config
from common.repository import BUILT_IN_DEFAULT
from deploy.stack import ROOT

from . import defaults, driver
from .markdown import fmt_spread, machine_lines, replace_section, table
from .peer_servers.venv import ensure_venv
from .results import SERVER_TREES, RunRecord, Spread, load_runs, select, spread_of, write_runs_csv
from .stack import (
    INDIVIDUAL,
    LitServeServer,
    ModelSettings,
    PlainCeleryServer,
    Server,
    Stack,
    Variant,
    batch_variant,
)

__all__ = ["CPU_GROUPS", "MODELS", "SECTION", "VARIANT_NAMES", "PeerVariant", "Row",
           "build_sessions", "main", "parse_args", "render_cpu_table",
           "render_performance_table", "summarize", "variants"]

SECTION = "peers"
#: Variant names, in the order they alternate; ``individual`` is the baseline of the ratios.
VARIANT_NAMES = ("individual", "batch-adaptive", "litserve", "plain-celery")
#: The project's default model (``MODEL``): its section and CSV are plain ``peers``.
DEFAULT_MODEL = BUILT_IN_DEFAULT
#: Models to choose from, with the weights each runs with (None: its own).
MODELS: dict[str, str | None] = {"efficientnet_lite0": None, "mobilenet_v3_small": "random", "null": None}
#: CPU accounting's process trees, in table order, with their column names.
CPU_GROUPS = {"web": "web (gunicorn)", "nginx": "nginx", "worker": "worker", "redis": "Redis",
              "litserve": "LitServe server",
              "locust": "load generator (locust)"}
#: Where LitServe's virtualenv is made on first use (``run/`` is git-ignored).
LITSERVE_VENV = Path("run/peers/litserve-venv")
#: Worktrees of ``--baseline`` commits, one per commit, kept for the next run.
BASELINE_DIR = ROOT / "run" / "peers" / "baseline"
LITSERVE_BATCH_TIMEOUT_S = 0.05

# -- the plan -----------------------------------------------------------------------

@dataclass(frozen=True)
class PeerVariant:
    """One server to measure: its name, how it starts (``kind``) and a line for the report."""

    name: str
    kind: str  #: ``project``, ``litserve`` or ``plain-celery``
    label: str
    env: Mapping[str, str] = field(default_factory=dict)  #: the project's settings (kind ``project``)
    #: Where the project's code runs from (kind ``project``): None, this checkout.
    root: Path | None = None

    @property
    def mode(self) -> str:
        return self.kind

    model: str = ""  #: the model it serves, for the runs' records

    @property
    def meta(self) -> dict[str, str]:
        """What each run's ``run.json`` adds about it."""
        return {"label": self.label, "model": self.model}


def variants(names: Sequence[str] = VARIANT_NAMES, batch_size: int = 4,
             batch_timeout: float = 2.0, baseline: Baseline | None = None) -> list[PeerVariant]:
    """The variants to compare, by name, in the order given (``baseline`` only with one)."""
    batch = batch_variant("batch-adaptive", batch_size, batch_timeout, "adaptive")
    known = {
        "individual": PeerVariant("individual", "project", "this project, individual mode (one forward pass "
                                  "per request)", INDIVIDUAL.env),
        "batch-adaptive": PeerVariant("batch-adaptive", "project", f"this project, batch mode: "
                                      f"BATCH_SIZE {batch_size}, BATCH_POLICY adaptive, BATCH_TIMEOUT "
                                      f"{batch_timeout:g} s", batch.env),
        "batch-inline": PeerVariant("batch-inline", "project", "batch-adaptive with IMAGES_BY_REFERENCE="
                                    "false: each image inside its task message (base64 in kombu's JSON "
                                    "envelope), as this project sent them before the image store",
                                    {**batch.env, "IMAGES_BY_REFERENCE": "false"}),
        "litserve": PeerVariant("litserve", "litserve", f"LitServe 0.2.19 (`loadtest/peer_servers/"
                                f"litserve_server.py`): max_batch_size {batch_size}, batch_timeout "
                                f"{LITSERVE_BATCH_TIMEOUT_S:g} s, 1 inference worker, 1 API server process"),
        "plain-celery": PeerVariant("plain-celery", "plain-celery", "Flask under gunicorn (gthread, 64 "
                                    "threads) sending one Celery task per image and waiting on "
                                    "`AsyncResult.get()`, Celery worker prefork × 2 "
                                    "(`loadtest/peer_servers/plain_celery.py`)"),
    }
    if baseline is not None:
        known["baseline"] = PeerVariant("baseline", "project", f"batch-adaptive as of git {baseline.commit}: "
                                        "the same settings, run from a worktree of that commit "
                                        f"(`{_shown(baseline.root)}`)", batch.env, baseline.root)
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"unknown variants {unknown}: use some of {list(known)}")
    return [known[n] for n in names]


def _shown(path: Path) -> Path:
    """``path`` relative to the checkout when inside it (reports name no machine's folders)."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


@dataclass(frozen=True)
class Baseline:
    """This project at an earlier commit, checked out in a worktree of its own."""

    commit: str  #: abbreviated hash
    root: Path

    @classmethod
    def of(cls, revision: str, parent: Path = BASELINE_DIR) -> Baseline:
        """``revision`` resolved (ValueError if git does not know it), its worktree's path."""
        found = subprocess.run(["git", "rev-parse", "--short", f"{revision}^{{commit}}"], cwd=ROOT,
                               capture_output=True, text=True, check=False)
        if found.returncode != 0:
            raise ValueError(f"--baseline {revision}: not a commit ({found.stderr.strip()})")
        commit = found.stdout.strip()
        return cls(commit, parent / commit)

    def ensure(self) -> None:
        """Check the commit out into :attr:`root` unless it is there (``git worktree add``)."""
        if (self.root / "webapp").is_dir():
            return
        subprocess.run(["git", "worktree", "add", "--detach", "--force", str(self.root), self.commit],
                       cwd=ROOT, check=True, capture_output=True, text=True)


def build_sessions(chosen: Sequence[PeerVariant], repeats: int, loads: tuple[driver.Load, ...]
                   ) -> list[driver.Session]:
    """A B C D A B C D: every variant once per round, in the same order each round."""
    return driver.alternate(chosen, lambda _variant: loads, repeats)


def server_factory(model: ModelSettings, batch_size: int, litserve_venv: Path,
                   flush: bool) -> driver.ServerFactory:
    """Start each session's variant: this project's stack (at its commit), LitServe or the plain pipeline."""
    def make(session: driver.Session, redis_url: str, log_dir: Path) -> Server:
        variant = session.variant
        if variant.kind == "project":
            return Stack(Variant(variant.name, variant.env), redis_url=redis_url, log_dir=log_dir,
                         flush=flush,
                         project_root=variant.root or ROOT, env=model.env())
        if variant.kind == "litserve":  # the first use makes the virtualenv: minutes, not measured
            python = ensure_venv(litserve_venv, log_path=log_dir / "litserve-venv.log")
            return LitServeServer(python, model, log_dir=log_dir, max_batch_size=batch_size,
                                  batch_timeout=LITSERVE_BATCH_TIMEOUT_S)
        return PlainCeleryServer(model, redis_url=redis_url, log_dir=log_dir, flush=flush)
    return make


@dataclass(frozen=True)
class Row:
    """One variant's numbers: medians and ranges over its rounds."""

    variant: str
    label: str
    rps: Spread | None
    p50_ms: Spread | None
    p95_ms: Spread | None
    errors_percent: Spread | None
    one_user_p50_ms: Spread | None
    cpu_ms: dict[str, Spread | None]  #: per CPU group, ms per request at ``users``
    server_cpu_ms: Spread | None
    cores_busy: Spread | None
    others_busy: Spread | None = None  #: cores busy outside the measured processes


def summarize(records: Sequence[RunRecord], names: Sequence[str], users: int) -> list[Row]:
    """One row per variant in ``names`` that has runs: ``users`` for the load columns, 1 user for
    the one-user p50 (the 1-user run of the plan, or any run at 1 user)."""
    rows = []
    for name in names:
        loaded = select(records, variant=name, users=users)
        single = select(records, variant=name, users=1)
        if not loaded and not single:
            continue
        label = str(next(iter(loaded or single)).meta.get("label", name))
        rows.append(Row(
            name, label, spread_of(loaded, lambda r: r.stats.requests_per_s),
            spread_of(loaded, lambda r: r.stats.p50_ms), spread_of(loaded, lambda r: r.stats.p95_ms),
            spread_of(loaded, lambda r: r.stats.error_percent), spread_of(single, lambda r: r.stats.p50_ms),
            {group: spread_of(loaded, lambda r,
                              g=group: r.cpu_ms((g,))) for group in CPU_GROUPS},  # type: ignore[misc]
            spread_of(loaded, lambda r: r.cpu_ms(SERVER_TREES)),
            spread_of(loaded, lambda r: r.cores_busy(SERVER_TREES)), spread_of(loaded,
                                                                               lambda r: r.others_busy())))
    return rows


def _ratio(row: Row, base: Row | None) -> str:
    if base is None or row is base or not base.rps or not row.rps or base.rps.median <= 0:
        return "—"
    return f"×{row.rps.median / base.rps.median:.2f}"


def render_performance_table(rows: Sequence[Row], users: int, baseline: str = "individual") -> str:
    """Throughput, latency and errors at ``users``, the one-user p50, and throughput against the baseline."""
    base = next((r for r in rows if r.variant == baseline), None)
    header = ["Variant", f"Requests per second ({users} users)", "Latency p50, ms", "Latency p95, ms",
              "Errors, %", "Latency p50 at 1 user, ms", f"Requests per second against {baseline}"]
    return table(header, [[f"`{r.variant}`", fmt_spread(r.rps, 2), fmt_spread(r.p50_ms, 0),
                           fmt_spread(r.p95_ms, 0), fmt_spread(r.errors_percent, 2),
                           fmt_spread(r.one_user_p50_ms, 0), _ratio(r, base)] for r in rows])


def render_cpu_table(rows: Sequence[Row], users: int) -> str:
    """CPU milliseconds per request of each process tree at ``users``; how busy the servers kept the cores."""
    header = ["Variant", *(f"{name}, CPU ms per request" for name in CPU_GROUPS.values()),
              "All server processes, CPU ms per request", "Server CPU, cores busy",
              "Everything else on the machine, cores busy"]
    return table(header, [[f"`{r.variant}`", *(fmt_spread(r.cpu_ms[g], 1) for g in CPU_GROUPS),
                           fmt_spread(r.server_cpu_ms, 1), fmt_spread(r.cores_busy, 2),
                           fmt_spread(r.others_busy, 2)] for r in rows])


def headline(rows: Sequence[Row], baseline: str = "individual") -> list[str]:
    """Each variant's throughput against the baseline's, with both numbers."""
    base = next((r for r in rows if r.variant == baseline), None)
    if base is None or base.rps is None or base.rps.median <= 0:
        return []
    return [f"{r.variant}: {r.rps.median:.2f} against {baseline}'s {base.rps.median:.2f} requests per second "
            f"= {r.rps.median / base.rps.median:.2f}×." for r in rows if r is not base and r.rps]


_CSV_COLUMNS: tuple[tuple[str, Callable[[RunRecord], Any]], ...] = (
    ("variant", lambda r: r.variant), ("kind", lambda r: r.mode), ("model", lambda r: r.meta.get("model")),
    ("users", lambda r: r.users), ("repeat", lambda r: r.repeat),
    ("duration_s", lambda r: r.meta.get("duration_s")),
    ("requests", lambda r: r.stats.requests), ("failures", lambda r: r.stats.failures),
    ("error_percent", lambda r: r.stats.error_percent), ("requests_per_s", lambda r: r.stats.requests_per_s),
    ("p50_ms", lambda r: r.stats.p50_ms), ("p95_ms", lambda r: r.stats.p95_ms),
    ("p99_ms", lambda r: r.stats.p99_ms),
    ("cpu_window_s", lambda r: r.meta.get("cpu_window_s")),
    *((f"cpu_s_{g}", lambda r, g=g: r.cpu_s((g,))) for g in CPU_GROUPS),
    *((f"cpu_ms_per_request_{g}", lambda r, g=g: r.cpu_ms((g,))) for g in CPU_GROUPS),
    ("cpu_s_machine", lambda r: (r.meta.get("cpu_s") or {}).get("machine")),
    ("server_cpu_ms_per_request", lambda r: r.cpu_ms(SERVER_TREES)),
    ("server_cores_busy", lambda r: r.cores_busy(SERVER_TREES)), ("other_cores_busy",
                                                                  lambda r: r.others_busy()),
)


def _names(model: str) -> tuple[str, str]:
    """The section and CSV names: ``peers``/``peers.csv`` for the default model, else with its name."""
    suffix = "" if model == DEFAULT_MODEL else f"-{model}"
    return f"{SECTION}{suffix}", f"{SECTION}{suffix}.csv"


def _section(plan: Mapping[str, Any], records: Sequence[RunRecord], rows: Sequence[Row], csv_name: str,
             run_dir: Path) -> str:
    users, model = plan["users"], plan["model"]
    weights = plan.get("model_weights") or "its own weights"
    rounds = max(r.repeat for r in records)
    problems = plan.get("errors") or []
    quick = " — a `--quick` smoke run, not a measurement" if plan.get("quick") else ""
    lines = [
        f"## Peers: this project against LitServe and a plain Flask + Celery pipeline ({model})", "",
        f"Generated by `{plan['command']}` ({plan.get('started_at', '?')} to "
        f"{plan.get('finished_at', '?')}){quick}. Every number is read from that run's locust CSV files and "
        f"`/proc` (one row per run in "
        f"[benchmarks/{csv_name}](benchmarks/{csv_name})); none is typed in. Medians over {rounds} round(s), "
        f"(min–max) in brackets. The variants alternated (A B C D A B C D), each freshly started, warmed up "
        f"for {plan['warmup_s']:g} s (dropped), then measured with {users} closed-loop users (no think time: "
        f"users = requests in flight) for {plan['duration_s']:g} s and with 1 user for "
        f"{plan['one_user_duration_s']:g} s.", "",
        f"Same for every variant: the model `{model}` ({weights}; MODEL_JIT="
        f"{str(plan.get('model_jit', True)).lower()}), the project's decoding and preprocessing "
        "(`workers.model`, `workers.preprocess`, imported, not copied), the photos (`loadtest/corpus`) and "
        "the load generator (`loadtest/locustfile.py`, `PhotoUploader`: FastHttpUser, a random photo per "
        "request as multipart field `file` to `POST /predict`). torch threads per forward pass = cores ÷ "
        "forward passes that run at once, the project's own rule.", "",
        "Variants: " + "; ".join(f"`{r.variant}`: {r.label}" for r in rows) + ".", "",
        "What differs besides batching: the project's web app adds admission control, deadlines, "
        "validation and metrics, and its worker runs its forward passes in a thread pool (by default "
        "`WORKER_POOL=threads`, `WORKER_CONCURRENCY=2`); the plain pipeline has none of those and runs 2 "
        "prefork processes (no interpreter lock shared between them); LitServe decodes and runs the model "
        "in one inference process (torch threads = all cores) behind one uvicorn API process.", "",
        *([f"**Throughput:** {' '.join(headline(rows))}", ""] if headline(rows) else []),
        f"### Throughput and latency at {users} users", "", render_performance_table(rows, users), "",
        f"### CPU per request at {users} users", "", render_cpu_table(rows, users), "",
        "How CPU is counted (`loadtest/cpu.py`): utime + stime of each process tree (the root process, "
        "every thread, every descendant ever seen) read from `/proc/<pid>/stat` every 0.25 s, taken between "
        "locust's `Resetting stats` (end of ramp-up) and `--run-time limit reached` log lines (interpolated "
        "between samples), divided by the requests locust counted in that window. web = gunicorn's master "
        "and workers; worker = the Celery worker with its pool processes; Redis = the `redis-server` the run "
        "used (anything else using that server during the run is counted too); LitServe server = its API "
        "server (uvicorn), inference worker and multiprocessing helpers; load generator = the locust "
        "process. \"Server CPU, cores busy\" is the server processes' CPU seconds per second: near the "
        "machine's core count the servers are CPU-bound, and then CPU per request, not waiting, sets the "
        "throughput. \"Everything else\" is the machine's busy time (`/proc/stat`) less every process "
        "above: this driver, and whatever else ran on the machine; well above 0.1, that round was "
        "disturbed and its throughput is low (CPU per request holds up better).", "",
    ]
    if problems:
        lines += ["### Problems during the run", "", *(f"- {e}" for e in problems), ""]
    lines += ["### Machine", "", *machine_lines(plan.get("machine") or {}), "",
              f"Raw files: `{run_dir}`."]
    return "\n".join(lines)


def build_report(run_dir: Path, out: Path) -> list[str]:
    """Write the section and its CSV from ``run_dir``'s files; the console lines (ValueError: no runs)."""
    plan = json.loads((run_dir / "plan.json").read_text())
    records = load_runs(run_dir)
    if not records:
        raise ValueError(f"no measured runs under {run_dir / 'runs'}: nothing to report")
    rows = summarize(records, plan.get("variant_names") or VARIANT_NAMES, int(plan["users"]))
    section, csv_name = _names(plan["model"])
    write_runs_csv(records, out.parent / "benchmarks" / csv_name, _CSV_COLUMNS)
    replace_section(out, section, _section(plan, records, rows, csv_name, run_dir))
    users = int(plan["users"])
    return [f"### Throughput and latency at {users} users", render_performance_table(rows, users), "",
            f"### CPU per request at {users} users", render_cpu_table(rows, users), "", *headline(rows)]


# -- the command --------------------------------------------------------------------

def _arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--duration", type=float, default=None, help="measured seconds at --users (30; --quick 4)")
    add("--one-user-duration", type=float, default=None, help="measured seconds at 1 user (10; --quick 3)")
    add("--users", type=int, default=None, help="closed-loop users (20; --quick 4)")
    add("--model", default=DEFAULT_MODEL, choices=sorted(MODELS),
        help="model every variant serves (%(default)s); mobilenet_v3_small runs random weights")
    add("--model-weights", default=None, help="MODEL_WEIGHTS instead of the model's default (a file, random)")
    add("--variants", default=",".join(VARIANT_NAMES), help="comma-separated subset of %(default)s")
    add("--batch-size", type=int, default=config.value("BATCH_SIZE"),
        help="BATCH_SIZE of batch-adaptive and LitServe's max_batch_size (%(default)s)")
    add("--batch-timeout", type=float, default=config.value("BATCH_TIMEOUT"),
        help="BATCH_TIMEOUT s of batch-adaptive (%(default)s)")
    add("--baseline", default=None, metavar="REV",
        help="adds the variant `baseline`: batch-adaptive run from a worktree of git REV (before/after)")
    add("--litserve-venv", type=Path, default=LITSERVE_VENV,
        help="LitServe's virtualenv, made on first use (%(default)s)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--quick`` fills in tiny values for whatever is not given."""
    parser, args = driver.parse_plan_args("peers", __doc__.splitlines()[0], argv, _arguments, {
        "repeats": (1, defaults.REPEATS), "duration": (4.0, 30.0), "one_user_duration": (3.0, 10.0),
        "users": (4, defaults.EQUAL_USERS),
    })
    if args.users < 1 or args.one_user_duration <= 0 or args.batch_size < 1:
        parser.error("--users and --batch-size must be >= 1, --one-user-duration > 0")
    try:
        args.baseline = None if args.baseline is None else Baseline.of(args.baseline)
        args.chosen = variants([v.strip() for v in args.variants.split(",") if v.strip()], args.batch_size,
                               args.batch_timeout, args.baseline)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; 0 when every session ran, 1 when some failed, 2 when nothing was measured."""
    args = parse_args(argv)
    model = ModelSettings(args.model, args.model_weights or MODELS[args.model],
                          bool(config.value("MODEL_JIT")))
    loads = (driver.Load(args.users, args.duration, roles=("load",)),
             driver.Load(1, args.one_user_duration, roles=("one-user",)))
    record = {"variant_names": [v.name for v in args.chosen], "users": args.users,
              "duration_s": args.duration,
              "one_user_duration_s": args.one_user_duration, "model": model.name,
              "model_weights": model.weights,
              "model_jit": model.jit, "batch_size": args.batch_size}
    if args.baseline is not None and args.report is None and any(v.name == "baseline" for v in args.chosen):
        args.baseline.ensure()
    make = server_factory(model, args.batch_size, args.litserve_venv, not args.keep_db)
    chosen = [dataclasses.replace(v, model=model.name) for v in args.chosen]
    plan = driver.Plan("peers", build_sessions(chosen, args.repeats, loads), record, build_report, make)
    return driver.run_plan(plan, args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
