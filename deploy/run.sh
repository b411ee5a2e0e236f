#!/usr/bin/env bash
# `deploy/run.sh SERVICE | worker N [MODEL]`: one program as supervisord starts it, on RUN_DIR/stack.env.
set -euo pipefail
# shellcheck source=deploy/common.sh
. "$(dirname "$0")/common.sh"

load_stack_env
export PYTHONUNBUFFERED=1
cd "$REPO_DIR"
if [ "${1:-}" = worker ]; then
    exec "$VENV_BIN/python" -m deploy.stack exec worker --index "${2:-0}" ${3:+--model "$3"}
fi
exec "$VENV_BIN/python" -m deploy.stack exec "${1:?usage: deploy/run.sh SERVICE | worker N [MODEL]}"
