#!/usr/bin/env bash
# One program of the local stack as supervisord starts it: `deploy/run.sh SERVICE`, or
# `deploy/run.sh worker N [MODEL]` for worker N (its process_num) of a model's group. The
# settings come from RUN_DIR/stack.env, which `make up` rewrites, not from supervisord's own
# environment: so a later `make up` with other settings only has to restart the programs.
set -euo pipefail
# shellcheck source=deploy/common.sh
. "$(dirname "$0")/common.sh"

load_stack_env
export PYTHONUNBUFFERED=1
cd "$REPO_DIR"
# The command lines live in deploy/stack.py, shared with the load-test driver and the tests.
if [ "${1:-}" = worker ]; then
    exec "$VENV_BIN/python" -m deploy.stack exec worker --index "${2:-0}" ${3:+--model "$3"}
fi
exec "$VENV_BIN/python" -m deploy.stack exec "${1:?usage: deploy/run.sh SERVICE | worker N [MODEL]}"
