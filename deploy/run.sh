#!/usr/bin/env bash
# Start one program of the local stack; supervisord runs `deploy/run.sh NAME`,
# and `deploy/run.sh worker N` for worker N of WORKERS (its process_num).
#
# The project variables come from run/stack.env, which `make up` rewrites, not
# from supervisord's own environment: so a later `make up` with other settings
# (USE_BATCH_PROCESSING=true, say) only has to restart the programs.
set -euo pipefail
# shellcheck source=deploy/common.sh
. "$(dirname "$0")/common.sh"

if [ -f "$RUN_DIR/stack.env" ]; then
    while IFS= read -r name; do
        [[ $name =~ $STACK_ENV_RE ]] && unset "$name"
    done < <(compgen -e)
    # shellcheck source=/dev/null
    . "$RUN_DIR/stack.env"
fi
export PYTHONUNBUFFERED=1
cd "$REPO_DIR"

# The command lines live in deploy/stack.py, shared with the load-test driver and the tests.
case "${1:-}" in
    web | flower | redis)
        exec "$VENV_BIN/python" -m deploy.stack exec "$1" ;;
    worker)
        # Its own Celery node name and /metrics port (WORKER_METRICS_PORT + N).
        exec "$VENV_BIN/python" -m deploy.stack exec worker --index "${2:-0}" ;;
    *)
        die "usage: deploy/run.sh web|worker [N]|flower|redis" ;;
esac
