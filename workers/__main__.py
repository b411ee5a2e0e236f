"""``python -m workers [--batch] [celery worker options]``: start a worker.
Settings come from the environment; ``--batch`` is ``USE_BATCH_PROCESSING=true``."""
from __future__ import annotations

import argparse
import sys

from common.config import ConfigError
from workers import lifecycle, runtime
from workers.app import app, consume
from workers.model import ModelLoadError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", action="store_true", help="batch mode (same as USE_BATCH_PROCESSING=true)")
    args, extra = parser.parse_known_args(argv)
    try:
        settings = runtime.configure(**({"batch_mode": True} if args.batch else {}))
        served = runtime.served()
    except ConfigError as exc:
        print(f"workers: configuration error: {exc}", file=sys.stderr)
        return lifecycle.START_FAILED
    except ModelLoadError as exc:
        print(f"workers: cannot serve model {settings.model or '(the default)'}: {exc}", file=sys.stderr)
        return lifecycle.START_FAILED
    consume(served.queue, served.async_queue)
    app.worker_main(["worker", f"--pool={settings.pool}", f"--concurrency={settings.concurrency}",
                     f"--loglevel={settings.log_level}", "--task-events", *extra])
    return lifecycle.START_FAILED if lifecycle.failed else 0


if __name__ == "__main__":
    sys.exit(main())
