#!/usr/bin/env bash
# Start one program of the local stack; supervisord runs `deploy/run.sh NAME`,
# and `deploy/run.sh worker N [MODEL]` for worker N (its process_num) of a model's
# group (deploy/models.py; without MODEL: the default model's).
#
# The project variables come from run/stack.env, which `make up` rewrites, not
# from supervisord's own environment: so a later `make up` with other settings
# (USE_BATCH_PROCESSING=true, say) only has to restart the programs.
set -euo pipefail
# shellcheck source=deploy/common.sh
. "$(dirname "$0")/common.sh"

load_stack_env
export PYTHONUNBUFFERED=1
cd "$REPO_DIR"

# The command lines live in deploy/stack.py, shared with the load-test driver and the tests.
case "${1:-}" in
    web | flower | redis)
        exec "$VENV_BIN/python" -m deploy.stack exec "$1" ;;
    worker)
        # Its own Celery node name and /metrics port (WORKER_METRICS_PORT + N).
        exec "$VENV_BIN/python" -m deploy.stack exec worker --index "${2:-0}" ${3:+--model "$3"} ;;
    *)
        die "usage: deploy/run.sh web|worker [N [MODEL]]|flower|redis" ;;
esac
