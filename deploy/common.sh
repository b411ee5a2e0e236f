# Sourced by deploy/*.sh: paths, the settings the scripts read, small helpers.
# shellcheck shell=bash

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV_BIN=${VENV_BIN:-$REPO_DIR/.venv/bin}
CONF=$REPO_DIR/deploy/supervisord.conf

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
# python for the helpers: the project's virtualenv when it exists (they need only the standard library).
py() {
    local python=python3
    [ -x "$VENV_BIN/python" ] && python=$VENV_BIN/python
    (cd "$REPO_DIR" && "$python" "$@")
}
ctl() { "$VENV_BIN/supervisorctl" -c "$CONF" "$@"; }

# The defaults of what the scripts read live in common.config: exported here for unset ones.
defaults=$(py -m deploy.models defaults RUN_DIR REDIS_URL TEST_AMQP_URL STACK STOP_TIMEOUT TAIL FOLLOW \
    COMPOSE_FILE) || die "cannot read the settings' defaults (above)"
eval "$defaults"
case $RUN_DIR in /*) ;; *) RUN_DIR=$REPO_DIR/$RUN_DIR ;; esac
# supervisord.conf expands these with %(ENV_X)s.
export REPO_DIR RUN_DIR VENV_BIN START_REDIS=${START_REDIS:-false}
# Flower reads FLOWER_BASIC_AUTH itself; an empty value would mean "user '' with password ''".
[ -n "${FLOWER_BASIC_AUTH:-}" ] || unset FLOWER_BASIC_AUTH

# The running local stack's settings, in place of this shell's own.
load_stack_env() {
    # shellcheck source=/dev/null
    [ ! -f "$RUN_DIR/stack.env" ] || . "$RUN_DIR/stack.env"
}

supervisord_running() {
    local pid
    pid=$(cat "$RUN_DIR/supervisord.pid" 2>/dev/null) && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# An engine that answers, and the compose plugin.
docker_usable() {
    command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1
}

# Which runner `make up` uses (STACK).
pick_runner() {
    case $STACK in
        auto) if docker_usable; then echo docker; else echo local; fi ;;
        docker) docker_usable || die "STACK=docker, but no Docker engine with the compose plugin answers"; echo docker ;;
        local) echo local ;;
        *) die "STACK must be auto, docker or local, not '${STACK}'" ;;
    esac
}

# Which runner a running stack uses: what `make up` recorded, else what answers.
stack_runner() {
    if supervisord_running; then echo local
    elif [ "$(cat "$RUN_DIR/runner" 2>/dev/null)" = docker ] || docker_usable; then echo docker
    else echo none
    fi
}
