#!/usr/bin/env bash
# `make down`: stop what `make up` started; harmless when nothing runs.
set -euo pipefail
# shellcheck source=deploy/common.sh
. "$(dirname "$0")/common.sh"

stopped=false
if supervisord_running; then
    pid=$(cat "$RUN_DIR/supervisord.pid")
    say "stopping the local stack (supervisord pid $pid)"
    ctl shutdown
    # supervisorctl returns at once; supervisord exits after its programs stopped.
    for _ in $(seq $((STOP_TIMEOUT * 10))); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && die "supervisord (pid $pid) still runs after ${STOP_TIMEOUT}s"
    stopped=true
fi
rm -f "$RUN_DIR/stack.env"
if docker_usable && [ -n "$(cd "$REPO_DIR" && docker compose ps -q 2>/dev/null)" ]; then
    say "docker compose down"
    (cd "$REPO_DIR" && docker compose down)
    stopped=true
fi
rm -f "$RUN_DIR/runner"
if $stopped; then say "stopped"; else say "nothing was running"; fi
