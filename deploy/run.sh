#!/usr/bin/env bash
# Start one program of the local stack; supervisord runs `deploy/run.sh NAME`.
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
    web | worker | flower | redis)
        exec "$VENV_BIN/python" -m deploy.stack exec "$1" ;;
    *)
        die "usage: deploy/run.sh web|worker|flower|redis" ;;
esac
