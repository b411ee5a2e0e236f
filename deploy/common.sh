# Shared by deploy/*.sh (sourced, not run): paths, defaults, small helpers.
# shellcheck shell=bash

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN_DIR=${RUN_DIR:-$REPO_DIR/run}
VENV_BIN=${VENV_BIN:-$REPO_DIR/.venv/bin}
CONF=$REPO_DIR/deploy/supervisord.conf
# supervisord.conf expands these with %(ENV_X)s; supervisorctl reads the same file.
export REPO_DIR RUN_DIR VENV_BIN
export START_REDIS=${START_REDIS:-false}

export WEB_PORT=${WEB_PORT:-8000}
export FLOWER_PORT=${FLOWER_PORT:-5555}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
# Worker processes on the queue (supervisord's numprocs; compose: ml_service + WORKERS-1 worker-extra).
export WORKERS=${WORKERS:-1}
# Address the local (supervisord) web app and Flower listen on; containers use 0.0.0.0.
export BIND_HOST=${BIND_HOST:-127.0.0.1}
# Flower reads FLOWER_BASIC_AUTH itself; an empty value would mean "user '' with password ''".
[ -n "${FLOWER_BASIC_AUTH:-}" ] || unset FLOWER_BASIC_AUTH

# The variables a running local stack was started with (run/stack.env). A
# later `make up` compares them and restarts the programs when they differ.
STACK_ENV_RE='^(WORKERS|MODEL|MODEL_WEIGHTS|MODEL_REPOSITORY|DEFAULT_MODEL|MODEL_JIT|SIMULATED_[A-Z0-9_]+|DEVICE|USE_BATCH_PROCESSING|BATCH_[A-Z0-9_]+|WORKER_[A-Z0-9_]+|TORCH_[A-Z0-9_]+|MAX_[A-Z0-9_]+|RESULT_[A-Z0-9_]+|DEFAULT_TOP_K|READY_CACHE_SECONDS|FLOWER_BASIC_AUTH|FLOWER_PORT|REDIS_[A-Z0-9_]+|CELERY_[A-Z0-9_]+|TASK_[A-Z0-9_]+|BROKER_[A-Z0-9_]+|WEB_[A-Z0-9_]+|GUNICORN_[A-Z0-9_]+|BIND_HOST|PROMETHEUS_MULTIPROC_DIR|OMP_NUM_THREADS|CUDA_VISIBLE_DEVICES)$'

say() { printf '==> %s\n' "$*"; }

# The settings the running local stack was started with (run/stack.env, which `make up`
# rewrites) in place of this shell's own.
load_stack_env() {
    local name
    [ -f "$RUN_DIR/stack.env" ] || return 0
    while IFS= read -r name; do
        [[ $name =~ $STACK_ENV_RE ]] && unset "$name"
    done < <(compgen -e)
    # Its `declare -x` lines, global (-g): sourced in a function they would be its locals.
    # shellcheck source=/dev/null
    . <(sed 's/^declare -x /declare -gx /' "$RUN_DIR/stack.env")
}
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# python for the helpers: the project's virtualenv when it exists.
py() {
    local python=python3
    [ -x "$VENV_BIN/python" ] && python=$VENV_BIN/python
    (cd "$REPO_DIR" && "$python" "$@")
}

# The URL `make up` polls: /readyz on the web port, on loopback when bound to all addresses.
ready_url() {
    local host=$BIND_HOST
    case $host in 0.0.0.0 | :: | "") host=127.0.0.1 ;; esac
    echo "http://$host:$WEB_PORT/readyz"
}

# Is a supervisord started by `make up` alive?
supervisord_running() {
    local pid
    pid=$(cat "$RUN_DIR/supervisord.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

ctl() { "$VENV_BIN/supervisorctl" -c "$CONF" "$@"; }

# Can we use Docker Compose? An engine that answers, and the compose plugin.
docker_usable() {
    command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1
}

# Which runner a running stack uses: what `make up` recorded, else what answers.
stack_runner() {
    if supervisord_running; then echo local
    elif [ "$(cat "$RUN_DIR/runner" 2>/dev/null)" = docker ] || docker_usable; then echo docker
    else echo none
    fi
}

# The project variables set now, one sourceable `declare -x` line each, sorted.
stack_env() {
    local name
    while IFS= read -r name; do
        [[ $name =~ $STACK_ENV_RE ]] && declare -p "$name"
    done < <(compgen -e | LC_ALL=C sort)
    return 0
}
