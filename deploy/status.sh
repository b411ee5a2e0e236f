#!/usr/bin/env bash
# `make status`: each service's state, then one GET /readyz.
set -euo pipefail
# shellcheck source=deploy/common.sh
. "$(dirname "$0")/common.sh"

case $(stack_runner) in
    local) ctl status || true ;;
    docker) (cd "$REPO_DIR" && docker compose ps) ;;
    *) say "the stack is not running (make up starts it)"; exit 0 ;;
esac
load_stack_env
py -m deploy.wait_ready --timeout 0
