#!/usr/bin/env bash
# `make reload MODEL=<name>`: deploy/reload.py with the settings the running local stack runs with.
set -euo pipefail
# shellcheck source=deploy/common.sh
. "$(dirname "$0")/common.sh"

[ -n "${1:-}" ] || die "usage: make reload MODEL=<name> (GET /models lists them)"
supervisord_running || die "no local stack runs: make up first. Under Docker Compose, recreate the model's
  service instead: docker compose up -d --no-deps --force-recreate <service>"
load_stack_env
cd "$REPO_DIR" && exec "$VENV_BIN/python" -m deploy.reload "$1"
