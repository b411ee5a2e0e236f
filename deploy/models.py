"""Which worker processes ``make up`` runs: a group per model of ``MODEL_REPOSITORY``.

The group ``worker`` serves the default model (``DEFAULT_MODEL``, the only model, else the
first by name) or, when ``MODEL`` names a built-in architecture or ``MODEL_WEIGHTS`` is set,
that architecture on the default model's queues, as before there was a repository. Every
other model gets a group ``model-<name>``. Each group runs ``WORKERS`` processes, or its
``model.toml``'s ``workers``; a folder that cannot serve gets one, which stops at start
with the reason in its log (and ``GET /models``). Worker numbers run on across the
groups, so each has its own Celery node name and ``/metrics`` port (``deploy.stack``).

``python -m deploy.models supervisor PATH`` writes the groups as supervisord programs
(``deploy/supervisord.conf`` includes the file); ``... compose PATH`` as a compose override
(a service per other model, extending ``worker-extra``; JSON, which compose reads as YAML);
``... groups`` prints one line each: ``PROGRAM MODEL COUNT FIRST``. Standard library only,
as ``deploy.stack``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.config import value
from common.repository import MODEL_NAME, RepositoryError, scan
from deploy.stack import ROOT

__all__ = ["DEFAULT_GROUP", "MODEL_PROGRAM_PREFIX", "WorkerGroup", "compose_override", "plan",
           "supervisor_programs"]

#: The default model's group: ``supervisorctl start 'worker:*'``, logs ``worker-<n>.log``.
DEFAULT_GROUP = "worker"
#: Every other model's group is ``model-<name>``.
MODEL_PROGRAM_PREFIX = "model-"


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
        return [WorkerGroup(DEFAULT_GROUP, None, workers, 0)]
    # A folder whose name cannot be a model's gets no worker (GET /models says why).
    names = sorted({*repository.models, *filter(MODEL_NAME.fullmatch, repository.broken)})
    if not names:
        return [WorkerGroup(DEFAULT_GROUP, None, workers, 0)]
    asked: str | None = value("MODEL", env)
    built_in = value("MODEL_WEIGHTS", env) is not None or (asked is not None and asked not in names)
    first = repository.default_name(value("DEFAULT_MODEL", env)) or names[0]

    def count(name: str) -> int:
        spec = repository.models.get(name)
        if spec is None:
            return 1  # it stops at start: one log line with the reason is enough
        return spec.workers or workers

    groups = [WorkerGroup(DEFAULT_GROUP, None if built_in else first, count(first), 0)]
    for name in names:
        if name != first:
            first_index = sum(group.count for group in groups)
            groups.append(WorkerGroup(f"{MODEL_PROGRAM_PREFIX}{name}", name, count(name), first_index))
    return groups


#: One group's supervisord program. Exit status 2 is a worker that cannot start (its model
#: or settings: ``workers.lifecycle.START_FAILED``), which a restart cannot mend: it stays
#: EXITED; any other exit is restarted. Celery's warm shutdown finishes the running tasks
#: first: stopwaitsecs is longer than TASK_TIME_LIMIT (45 s). The whole process group is
#: signalled, so no child outlives it.
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
stopsignal=TERM
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
    head = "; Written by `make up` (python -m deploy.models supervisor): one program per model.\n"
    return head + "".join(
        _PROGRAM.format(program=group.program, model=f" {group.model}" if group.model else "",
                        count=group.count, first=group.first)
        for group in groups)


#: Where a ``MODEL_REPOSITORY`` from outside the image is mounted in the containers.
_MOUNTED_REPOSITORY = "/models"


def compose_override(groups: Sequence[WorkerGroup],
                     env: Mapping[str, str] | None = None) -> dict[str, object]:
    """``compose.yaml``'s additions: ``MODEL`` for the default worker, a service per other model
    (``deploy.replicas``: its count), and a folder other than the image's ``models/`` mounted."""
    repository = (ROOT / value("MODEL_REPOSITORY", env)).resolve()
    mounted = repository != (ROOT / "models").resolve()
    extra: dict[str, object] = {"volumes": [f"{repository}:{_MOUNTED_REPOSITORY}:ro"]} if mounted else {}
    where = {"MODEL_REPOSITORY": _MOUNTED_REPOSITORY} if mounted else {}
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


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("supervisor").add_argument("path", type=Path)
    sub.add_parser("compose").add_argument("path", type=Path)
    sub.add_parser("groups")
    args = parser.parse_args(argv)
    groups = plan()
    if args.verb == "groups":
        for group in groups:
            print(group.program, group.model or "-", group.count, group.first)
    elif args.verb == "supervisor":
        _write(args.path, supervisor_programs(groups))
    else:
        _write(args.path, json.dumps(compose_override(groups), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
