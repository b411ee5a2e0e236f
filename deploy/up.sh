#!/usr/bin/env bash
# `make up`: start the whole stack detached; return once GET /readyz answers 200.
#
# With a Docker engine (`docker info` answers) and the compose plugin, that is
# `docker compose up -d --build`. Without one, the same services run as local
# processes under supervisord (deploy/supervisord.conf; pid, socket and logs in
# run/). STACK=docker or STACK=local forces one.
#
# Running it again is harmless: with the same settings it only starts programs
# that are down and waits for ready; with other settings (USE_BATCH_PROCESSING,
# BATCH_SIZE, ...) it restarts the workers, web and flower with the new ones (and
# the whole stack when REDIS_URL changed, or the models or their worker counts).
# Compose recreates changed containers itself.
#
# Every model of MODEL_REPOSITORY gets its workers (deploy/models.py): WORKERS=N
# (default 1) processes each, or its model.toml's `workers`. Locally they are
# supervisord programs (worker:worker-0 .. for the default model, model-<name>:..
# for the others); under Docker the ml_service container plus replicas of
# worker-extra for the default model, and a service per other model (an override
# file in run/). A model whose workers stop at start does not hold up the others.
set -euo pipefail
# shellcheck source=deploy/common.sh
. "$(dirname "$0")/common.sh"

export USE_BATCH_PROCESSING=${USE_BATCH_PROCESSING:-false}
READY_TIMEOUT=${READY_TIMEOUT:-180}
READY_URL=$(ready_url)
[[ $WORKERS =~ ^[1-9][0-9]*$ ]] || die "WORKERS must be a whole number >= 1, not '${WORKERS}'"

case $(printf '%s' "$USE_BATCH_PROCESSING" | tr '[:upper:]' '[:lower:]') in
    1 | true | yes | on) mode="batch" ;;
    *) mode="individual" ;;
esac

pick_runner() {
    case ${STACK:-auto} in
        auto) if docker_usable; then echo docker; else echo local; fi ;;
        docker) docker_usable || die "STACK=docker, but no Docker engine with the compose plugin answers"; echo docker ;;
        local) echo local ;;
        *) die "STACK must be auto, docker or local, not '${STACK}'" ;;
    esac
}

# Decide who provides Redis for a fresh local stack; sets START_REDIS.
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

# Each start writes fresh logs (the previous run's stay in NAME.log.prev), so
# `make logs | grep BATCH` shows the current mode, as with a new container.
# Workers log to worker-N.log; worker.log is a link to worker-0's (link_worker_log).
rotate_logs() {
    local name log
    for name in "$@"; do
        [ "$name" = worker ] && [ -L "$RUN_DIR/logs/worker.log" ] && rm -f "$RUN_DIR/logs/worker.log"
        for log in "$RUN_DIR/logs/$name.log" "$RUN_DIR/logs/$name"-[0-9]*.log \
            $([ "$name" = worker ] && printf '%s ' "$RUN_DIR/logs/model-"*.log); do
            [ -f "$log" ] && mv -f "$log" "$log.prev"
        done
    done
    return 0
}

# `make logs` (deploy/logs.sh) shows run/logs/worker.log: the first worker's log.
# Every worker runs the same settings, so its mode banner speaks for all.
link_worker_log() { ln -sfn worker-0.log "$RUN_DIR/logs/worker.log"; }

# The worker programs of these settings, one per model (supervisord.conf includes the file).
write_worker_programs() { py -m deploy.models supervisor "$1" || die "cannot plan the workers (above)"; }

# supervisorctl's names for every worker: worker:* model-<name>:* ...
worker_programs() { sed -n 's/^\[program:\(.*\)\]$/\1:*/p' "$RUN_DIR/workers.conf"; }

start_local() {
    [ -x "$VENV_BIN/supervisord" ] || die "supervisord is not in $VENV_BIN: run make install"
    choose_redis
    # It may hold secrets (REDIS_PASSWORD, FLOWER_BASIC_AUTH): readable by us alone.
    (umask 077 && stack_env >"$RUN_DIR/stack.env")
    write_worker_programs "$RUN_DIR/workers.conf"
    rotate_logs redis worker web flower
    link_worker_log
    say "starting supervisord (mode: $mode; logs in ${RUN_DIR#"$REPO_DIR"/}/logs)"
    "$VENV_BIN/supervisord" -c "$CONF"
}

# A local stack is already running: apply changed settings, restart what is down.
update_local() {
    local new old changed
    new=$(stack_env)
    old=$(cat "$RUN_DIR/stack.env" 2>/dev/null || true)
    # supervisord reads its programs only when it starts: other models or counts restart it.
    write_worker_programs "$RUN_DIR/workers.conf.new"
    if ! cmp -s "$RUN_DIR/workers.conf.new" "$RUN_DIR/workers.conf"; then
        rm -f "$RUN_DIR/workers.conf.new"
        say "the models or their worker counts changed: restarting the whole stack"
        "$REPO_DIR/deploy/down.sh"
        start_local
        return
    fi
    rm -f "$RUN_DIR/workers.conf.new"
    # shellcheck disable=SC2046 # one word per program
    set -- $(worker_programs) web flower
    if [ "$new" = "$old" ]; then
        say "local stack already running with these settings (mode: $mode)"
        ctl start "$@" | grep -v 'already started' || true
        return
    fi
    # Names only: values may hold secrets (FLOWER_BASIC_AUTH).
    changed=$({ diff <(printf '%s\n' "$old") <(printf '%s\n' "$new") || true; } \
        | sed -n 's/^[<>] declare -x \([A-Za-z0-9_]*\)=.*/\1/p' | sort -u | tr '\n' ' ')
    if [[ " $changed " == *" REDIS_"* ]]; then
        say "settings changed (${changed% }): Redis' among them, restarting the whole stack"
        "$REPO_DIR/deploy/down.sh"
        start_local
    else
        say "settings changed (${changed% }): restarting the workers, web and flower (mode: $mode)"
        ctl stop "$@"
        rotate_logs worker web flower
        link_worker_log
        printf '%s\n' "$new" >"$RUN_DIR/stack.env"
        ctl start "$@"
    fi
}

print_urls() {
    local runner=$1 metrics="http://localhost:$WEB_PORT/metrics (web)" port=${WORKER_METRICS_PORT:-9808}
    local models total=0 program model count first
    while read -r program model count first; do
        models+="${models:+, }${model/#-/${MODEL:-default}} ($count worker(s))"
        total=$((total + count))
    done < <(py -m deploy.models groups)
    if [ "$runner" = local ] && [ "$port" != 0 ]; then
        if [ "$total" = 1 ]; then metrics+=", http://localhost:$port/metrics (worker)"
        else metrics+=", http://localhost:$port/metrics .. :$((port + total - 1))/metrics (worker-0 .. worker-$((total - 1)))"
        fi
    fi
    cat <<EOF

Stack is up ($runner, $mode mode).
  Models    $models: GET http://localhost:$WEB_PORT/models
  API       POST http://localhost:$WEB_PORT/predict   (curl -F file=@cat.jpg http://localhost:$WEB_PORT/predict)
            POST http://localhost:$WEB_PORT/models/<name>/predict
  Page      http://localhost:$WEB_PORT/
  Flower    http://localhost:$FLOWER_PORT/
  Metrics   $metrics
  Logs      make logs        Status: make status        Stop: make down
EOF
}

# The compose files (COMPOSE_FILE, else compose.yaml) and run/compose.models.yaml: the models' workers.
compose_up() {
    local file default_count args=()
    py -m deploy.models compose "$RUN_DIR/compose.models.yaml" || die "cannot plan the workers (above)"
    IFS=: read -ra files <<<"${COMPOSE_FILE:-compose.yaml}"
    for file in "${files[@]}" "$RUN_DIR/compose.models.yaml"; do args+=(-f "$file"); done
    default_count=$(py -m deploy.models groups | awk 'NR == 1 {print $3}')
    # ml_service is the default model's first worker (its fixed name allows one container); the rest are worker-extra.
    docker compose "${args[@]}" up -d --build --remove-orphans --scale "worker-extra=$((default_count - 1))"
}

fail_not_ready() {
    say "not ready; the stack is left running so you can look:"
    "$REPO_DIR/deploy/status.sh" || true
    TAIL=20 "$REPO_DIR/deploy/logs.sh" || true
    die "the stack did not become ready (see the logs above; make logs, make down)"
}

main() {
    local runner socket=
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
    [ "$runner" = local ] && socket=$RUN_DIR/supervisor.sock
    say "waiting up to ${READY_TIMEOUT}s for $READY_URL"
    py -m deploy.wait_ready "$READY_URL" --timeout "$READY_TIMEOUT" ${socket:+--supervisor-socket "$socket"} \
        || fail_not_ready
    print_urls "$runner"
}

main "$@"
