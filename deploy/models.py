"""What ``make up`` derives from the settings: the worker groups, their environment, the summary."""
from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.config import VARIABLES, ConfigError, raw, value
from common.repository import MODEL_NAME, RepositoryError, scan
from deploy.stack import ROOT

__all__ = ["MODEL_PROGRAM_PREFIX", "WorkerGroup", "compose_override", "plan", "stack_env",
           "supervisor_programs"]

_USAGE = "python -m deploy.models supervisor|compose PATH | env | defaults NAME... | mode | summary RUNNER"
#: Every model's group but the default one's (``worker``) is ``model-<name>``.
MODEL_PROGRAM_PREFIX = "model-"
#: What the programs read besides common.config's variables: torch's and CUDA's own.
_EXTERNAL = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "TORCH_HOME")


@dataclass(frozen=True)
class WorkerGroup:
    """``count`` worker processes numbered from ``first``, serving ``model`` (None: ``MODEL``)."""

    program: str
    model: str | None
    count: int
    first: int


def plan(env: Mapping[str, str] | None = None) -> list[WorkerGroup]:
    """The worker groups for these settings (the environment when ``env`` is None)."""
    workers: int = value("WORKERS", env)
    try:
        repository = scan(value("MODEL_REPOSITORY", env))
    except RepositoryError:
        return [WorkerGroup("worker", None, workers, 0)]
    # A folder whose name cannot be a model's gets no worker (GET /models says why).
    names = sorted({*repository.models, *filter(MODEL_NAME.fullmatch, repository.broken)})
    if not names:
        return [WorkerGroup("worker", None, workers, 0)]
    asked: str | None = value("MODEL", env)
    built_in = value("MODEL_WEIGHTS", env) is not None or (asked is not None and asked not in names)
    first = repository.default_name(value("DEFAULT_MODEL", env)) or names[0]

    def count(name: str) -> int:
        spec = repository.models.get(name)
        return 1 if spec is None else spec.workers or workers  # a broken one only logs why it stops

    groups = [WorkerGroup("worker", None if built_in else first, count(first), 0)]
    for name in names:
        if name != first:
            groups.append(WorkerGroup(MODEL_PROGRAM_PREFIX + name, name, count(name),
                                      sum(group.count for group in groups)))
    return groups


#: One group's supervisord program: exit 2 (cannot start) stays EXITED; stopwaitsecs > TASK_TIME_LIMIT.
_PROGRAM = """
[program:{program}]
command=%(ENV_REPO_DIR)s/deploy/run.sh worker %(process_num)d{model}
process_name=%(program_name)s-%(process_num)d
numprocs={count}
numprocs_start={first}
directory=%(ENV_REPO_DIR)s
priority=20
startsecs=5
autorestart=unexpected
exitcodes=0,2
stopwaitsecs=60
stopasgroup=true
killasgroup=true
stdout_logfile=%(ENV_RUN_DIR)s/logs/%(program_name)s-%(process_num)d.log
stdout_logfile_maxbytes=20MB
stdout_logfile_backups=2
redirect_stderr=true
"""


def supervisor_programs(groups: Sequence[WorkerGroup]) -> str:
    """The groups as supervisord ``[program:...]`` sections."""
    return "; Written by `make up` (python -m deploy.models supervisor).\n" + "".join(
        _PROGRAM.format(program=group.program, model=f" {group.model}" if group.model else "",
                        count=group.count, first=group.first) for group in groups)


def compose_override(groups: Sequence[WorkerGroup],
                     env: Mapping[str, str] | None = None) -> dict[str, object]:
    """``compose.yaml``'s additions: a service per other model, a repository not the image's mounted."""
    repository = (ROOT / value("MODEL_REPOSITORY", env)).resolve()
    mounted = repository != (ROOT / "models").resolve()
    extra: dict[str, object] = {"volumes": [f"{repository}:/models:ro"]} if mounted else {}
    where = {"MODEL_REPOSITORY": "/models"} if mounted else {}
    default, *others = groups
    worker = {"environment": {**where, **({"MODEL": default.model} if default.model else {})}, **extra}
    services: dict[str, object] = {"worker": worker, "worker-extra": worker}
    if mounted:
        services["web"] = {"environment": where, **extra}
    for group in others:
        services[group.program] = {
            "extends": {"file": str(ROOT / "compose.yaml"), "service": "worker-extra"},
            "environment": {**where, "MODEL": group.model, "MODEL_WEIGHTS": ""},
            "deploy": {"replicas": group.count}, **extra}
    return {"services": services}


def stack_env(env: Mapping[str, str] | None = None) -> str:
    """``RUN_DIR/stack.env``: the programs' settings, defaults written out (a later run compares equal)."""
    names = sorted([*(name for name, variable in VARIABLES.items()
                      if variable.parse and not name.startswith(("TEST_", "LOADTEST_"))), *_EXTERNAL])
    lines = [f"unset {' '.join(names)}"]
    for name in names:
        if text := raw(name, env):
            lines.append(f"export {name}={shlex.quote(text)}")
    return "\n".join(lines) + "\n"


def summary(runner: str, groups: Sequence[WorkerGroup], env: Mapping[str, str] | None = None) -> str:
    """What ``make up`` prints once the stack is ready."""
    web = f"http://localhost:{value('WEB_PORT', env)}"
    metrics, port = f"{web}/metrics (web)", value("WORKER_METRICS_PORT", env)
    total = groups[-1].first + groups[-1].count
    if runner == "local" and port:
        metrics += (f", http://localhost:{port}/metrics (worker)" if total == 1 else
                    f", http://localhost:{port}/metrics .. :{port + total - 1}/metrics "
                    f"(worker-0 .. worker-{total - 1})")
    default = value("MODEL", env) or "default"
    models = ", ".join(f"{group.model or default} ({group.count} worker(s))" for group in groups)
    return f"""
Stack is up ({runner}, {_mode(env)} mode).
  Models    {models}: GET {web}/models
  API       POST {web}/predict   (curl -F file=@cat.jpg {web}/predict)
            POST {web}/models/<name>/predict
  Page      {web}/
  Flower    http://localhost:{value('FLOWER_PORT', env)}/
  Metrics   {metrics}
  Logs      make logs        Status: make status        Stop: make down"""


def _mode(env: Mapping[str, str] | None = None) -> str:
    return "batch" if value("USE_BATCH_PROCESSING", env) else "individual"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def main(argv: Sequence[str] | None = None) -> int:
    verb, *args = sys.argv[1:] if argv is None else argv
    try:
        if verb == "defaults":  # each default once, in common.config; a set variable keeps its value
            print("".join(f"export {name}={shlex.quote(raw(name))}\n" for name in args), end="")
        elif verb == "env":
            print(stack_env(), end="")
        elif verb == "mode":
            print(_mode())
        elif verb == "summary":
            print(summary(args[0], plan()))
        elif verb == "supervisor":
            _write(Path(args[0]), supervisor_programs(plan()))
        elif verb == "compose":  # prints the default model's worker count: up.sh scales worker-extra
            groups = plan()
            _write(Path(args[0]), json.dumps(compose_override(groups), indent=2) + "\n")
            print(groups[0].count)
        else:
            raise ValueError(verb)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, IndexError):
        print(f"usage: {_USAGE}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
