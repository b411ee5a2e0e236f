"""``make reload MODEL=<name>``: restart one model's workers one at a time, a spare first, never none."""
from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from celery import Celery

from common.config import value
from common.repository import RepositoryError, queues_of, read_model, scan
from deploy.models import plan
from deploy.stack import ROOT, NotReadyError, Process, ServiceExitedError, wait_until

__all__ = ["main"]

#: Seconds a new worker may take to consume, and to finish at SIGTERM (the workers' stopwaitsecs).
_START_TIMEOUT, _STOP_GRACE = 240.0, 60.0


def _wait_consuming(app: Celery, index: int, queue: str, spare: Process | None = None) -> None:
    def check() -> str | None:
        replies = app.control.inspect(timeout=1.0).active_queues() or {}
        consuming = any(node.startswith(f"worker-{index}@") and queue in {q["name"] for q in queues or ()}
                        for node, queues in replies.items())
        return None if consuming else f"worker-{index} does not consume {queue}"
    try:
        wait_until(check, _START_TIMEOUT, interval=0.5, give_up=spare.exited if spare else None)
    except ServiceExitedError as exc:
        raise SystemExit(f"reload: the spare worker stopped, nothing was restarted: {exc}") from None
    except NotReadyError as exc:
        raise SystemExit(f"reload: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.reload", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the model whose workers restart")
    args = parser.parse_args(argv)
    try:
        repository = scan(value("MODEL_REPOSITORY"))
        default = repository.default_name(value("DEFAULT_MODEL"))
        groups = plan()
        group = next((g for g in groups if (g.model or default) == args.model), None)
        if group is None:
            raise SystemExit(f"reload: no workers serve a model named {args.model!r}; the models: "
                             f"{', '.join(str(g.model or default) for g in groups)}")
        spec = read_model(repository.root / args.model) if args.model in repository.names() else None
    except RepositoryError as exc:
        raise SystemExit(f"reload: {args.model} cannot serve as it is now, nothing was restarted: "
                         f"{exc}") from exc
    queue = queues_of(args.model, default, value("CELERY_QUEUE"))[0]
    app = Celery(set_as_current=False)
    app.config_from_object("celeryconfig")
    spare_index = sum(g.count for g in groups)
    log = ROOT / value("RUN_DIR") / "logs" / f"reload-{args.model}.log"
    spare_argv = [str(ROOT / "deploy" / "run.sh"), "worker", str(spare_index),
                  *([group.model] if group.model else [])]
    version = f"version {spec.version}" if spec else "the built-in model"
    print(f"==> reload {args.model} ({version}): a spare worker first (log {log})", flush=True)
    with Process(spare_argv, log_path=log, grace=_STOP_GRACE) as spare:
        _wait_consuming(app, spare_index, queue, spare)
        for index in range(group.first, group.first + group.count):
            name = f"{group.program}:{group.program}-{index}"
            print(f"==> restarting {name}", flush=True)
            done = subprocess.run([str(Path(sys.executable).parent / "supervisorctl"), "-c",
                                   str(ROOT / "deploy" / "supervisord.conf"), "restart", name],
                                  capture_output=True, text=True, check=False)
            print((done.stdout + done.stderr).strip(), flush=True)
            _wait_consuming(app, index, queue)
        print("==> stopping the spare worker (warm shutdown)", flush=True)
    print(f"==> {args.model} reloaded: {group.count} worker(s) on {version}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
