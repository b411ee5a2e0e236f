"""``python -m workers [--batch] [celery worker options]``: start a worker.

The seed guide's "direct command". Settings come from the environment
(README.md, "Configuration"); ``--batch`` is ``USE_BATCH_PROCESSING=true``.
"""
from __future__ import annotations

import argparse
import sys

from common.config import ConfigError, WorkerSettings
from workers import runtime
from workers.app import app, consume
from workers.exceptions import ModelLoadError


def worker_argv(settings: WorkerSettings, extra: list[str]) -> list[str]:
    """The ``celery worker`` command line for these settings."""
    return ["worker", f"--pool={settings.pool}", f"--concurrency={settings.concurrency}",
            f"--loglevel={settings.loglevel}", "--task-events", *extra]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", action="store_true", default=None,
                        help="batch mode (same as USE_BATCH_PROCESSING=true)")
    args, extra = parser.parse_known_args(argv)
    try:
        settings = runtime.configure(**({} if args.batch is None else {"batch_mode": True}))
        served = runtime.served()
    except ConfigError as exc:
        print(f"workers: configuration error: {exc}", file=sys.stderr)
        return 2
    except ModelLoadError as exc:
        print(f"workers: cannot serve model {settings.model or '(the default)'}: {exc}", file=sys.stderr)
        return 2
    consume(served.queue, served.async_queue)
    app.worker_main(worker_argv(settings, extra))
    from workers import lifecycle

    return lifecycle.START_FAILED if lifecycle.start_failed() else 0


if __name__ == "__main__":
    sys.exit(main())
