#!/usr/bin/env bash
# `make up`: start the stack detached (compose, else supervisord) until /readyz; again, restart what changed.
set -euo pipefail
# shellcheck source=deploy/common.sh
. "$(dirname "$0")/common.sh"

[[ ${WORKERS:-1} =~ ^[1-9][0-9]*$ ]] || die "WORKERS must be a whole number >= 1, not '${WORKERS}'"
mode=$(py -m deploy.models mode) || exit 1

# Who provides Redis for a fresh local stack: sets START_REDIS.
choose_redis() {
    if py -m deploy.redisurl ping "$REDIS_URL"; then
        say "Redis answers at $REDIS_URL: using it"
        START_REDIS=false
    elif ! py -m deploy.redisurl is-local "$REDIS_URL"; then
        die "no Redis answers at $REDIS_URL; start it, or unset REDIS_URL to use a local one"
    elif command -v redis-server >/dev/null 2>&1; then
        say "no Redis answers at $REDIS_URL: starting redis-server on port $(py -m deploy.redisurl port "$REDIS_URL") under supervisord"
        START_REDIS=true
    else
        die "no Redis answers at $REDIS_URL and redis-server is not installed.
  Install it (Debian/Ubuntu: sudo apt-get install redis-server; macOS: brew install redis),
  or point REDIS_URL at a running Redis, then run make up again."
    fi
    export START_REDIS
}

# Fresh logs for each start (the last run's in NAME.log.prev; not $1's, which keeps running).
rotate_logs() {
    local log
    for log in "$RUN_DIR"/logs/*.log; do
        [ "$log" = "$RUN_DIR/logs/${1:-}.log" ] && continue
        if [ -L "$log" ]; then rm -f "$log"; elif [ -f "$log" ]; then mv -f "$log" "$log.prev"; fi
    done
    ln -sfn worker-0.log "$RUN_DIR/logs/worker.log"
}

# supervisord.conf includes the file: a program per model.
write_workers() { py -m deploy.models supervisor "$1" || die "cannot plan the workers (above)"; }

start_local() {
    [ -x "$VENV_BIN/supervisord" ] || die "supervisord is not in $VENV_BIN: run make install"
    choose_redis
    # It may hold secrets (REDIS_PASSWORD, FLOWER_BASIC_AUTH): readable by us alone.
    (umask 077 && py -m deploy.models env >"$RUN_DIR/stack.env")
    write_workers "$RUN_DIR/workers.conf"
    rotate_logs
    say "starting supervisord (mode: $mode; logs in ${RUN_DIR#"$REPO_DIR"/}/logs)"
    "$VENV_BIN/supervisord" -c "$CONF"
}

restart_all() { say "$1"; "$REPO_DIR/deploy/down.sh"; start_local; }

# A local stack is already running: apply changed settings, restart what is down.
update_local() {
    local new old changed
    new=$(py -m deploy.models env)
    old=$(cat "$RUN_DIR/stack.env" 2>/dev/null || true)
    # supervisord reads its programs only when it starts: other models or counts restart it.
    write_workers "$RUN_DIR/workers.conf.new"
    if ! cmp -s "$RUN_DIR/workers.conf.new" "$RUN_DIR/workers.conf"; then
        rm -f "$RUN_DIR/workers.conf.new"
        restart_all "the models or their worker counts changed: restarting the whole stack"
        return
    fi
    rm -f "$RUN_DIR/workers.conf.new"
    # Every program but Redis, which keeps the queue (worker:worker-0 .. web ...).
    # shellcheck disable=SC2046 # one word per program
    set -- $(ctl avail | awk '$1 != "redis" {print $1}')
    if [ "$new" = "$old" ]; then
        say "local stack already running with these settings (mode: $mode)"
        ctl start "$@" | grep -v 'already started' || true
        return
    fi
    # Names only: values may hold secrets.
    changed=$({ diff <(printf '%s\n' "$old") <(printf '%s\n' "$new") || true; } \
        | sed -n 's/^[<>] export \([A-Za-z0-9_]*\)=.*/\1/p' | sort -u | tr '\n' ' ')
    if [[ " $changed " == *" REDIS_"* ]]; then
        restart_all "settings changed (${changed% }): Redis' among them, restarting the whole stack"
    else
        say "settings changed (${changed% }): restarting the workers, web and flower (mode: $mode)"
        ctl stop "$@"
        rotate_logs redis
        printf '%s\n' "$new" >"$RUN_DIR/stack.env"
        ctl start "$@"
    fi
}

# The compose files (COMPOSE_FILE) and RUN_DIR/compose.models.yaml: the models' workers.
compose_up() {
    local file default_count args=()
    default_count=$(py -m deploy.models compose "$RUN_DIR/compose.models.yaml") \
        || die "cannot plan the workers (above)"
    IFS=: read -ra files <<<"$COMPOSE_FILE"
    for file in "${files[@]}" "$RUN_DIR/compose.models.yaml"; do args+=(-f "$file"); done
    # ml_service is the default model's first worker (its fixed name allows one container); the rest are worker-extra.
    docker compose "${args[@]}" up -d --build --remove-orphans --scale "worker-extra=$((default_count - 1))"
}

runner=$(pick_runner)
cd "$REPO_DIR"
mkdir -p "$RUN_DIR/logs"
if [ "$runner" = docker ]; then
    say "Docker engine found: docker compose up -d --build (mode: $mode)"
    compose_up
elif supervisord_running; then
    update_local
else
    start_local
fi
echo "$runner" >"$RUN_DIR/runner"
socket=
[ "$runner" = local ] && socket=$RUN_DIR/supervisor.sock
py -m deploy.wait_ready ${socket:+--supervisor-socket "$socket"} || {
    say "not ready; the stack is left running so you can look:"
    "$REPO_DIR/deploy/status.sh" || true
    TAIL=20 "$REPO_DIR/deploy/logs.sh" || true
    die "the stack did not become ready (see the logs above; make logs, make down)"
}
py -m deploy.models summary "$runner"
