#!/usr/bin/env bash
# `deploy/system_deps.sh test|up`: a make target's system programs, apt-get installed as root, else printed.
set -euo pipefail
# shellcheck source=deploy/common.sh
. "$(dirname "$0")/common.sh"

# Debian puts nginx and rabbitmq-server in sbin, off a user's PATH (deploy/stack.py looks there too).
SBIN_PATH=${SBIN_PATH:-/usr/local/sbin:/usr/sbin}
have() { PATH="$PATH:$SBIN_PATH" command -v "$1" >/dev/null 2>&1; }

RABBITMQ_START_TIMEOUT=${RABBITMQ_START_TIMEOUT:-90}
redis_answers() { py -m deploy.redisurl ping "$REDIS_URL"; }
amqp_answers() { py -m deploy.redisurl ping "$TEST_AMQP_URL"; }

# The tests' RabbitMQ: a local one is started (as root), a remote one left to its owner (the tests skip).
ensure_rabbitmq() {
    amqp_answers && return 0
    if ! py -m deploy.redisurl is-local "$TEST_AMQP_URL"; then
        say "no RabbitMQ answers at $TEST_AMQP_URL: the RabbitMQ tests will be skipped"
        return 0
    fi
    [ "$(id -u)" -eq 0 ] || die "make test needs RabbitMQ, which does not answer on $TEST_AMQP_URL. Start it, then run make test again:
  sudo rabbitmq-server -detached"
    say "no RabbitMQ answers at $TEST_AMQP_URL: rabbitmq-server -detached"
    rabbitmq-server -detached
    local waited=0
    until rabbitmq-diagnostics -q ping >/dev/null 2>&1; do
        [ "$waited" -lt "$RABBITMQ_START_TIMEOUT" ] || die "rabbitmq-server did not answer rabbitmq-diagnostics ping within ${RABBITMQ_START_TIMEOUT}s"
        sleep 2  # polling the server: nothing to block on
        waited=$((waited + 2))
    done
    say "RabbitMQ answers (after ${waited}s)"
}

# The programs TARGET needs that this machine lacks, one a line.
needs_for() {
    case $1 in
        test)
            have chromium || echo chromium
            have nginx || echo nginx
            have redis-server || redis_answers || echo redis-server
            have rabbitmq-server || amqp_answers || echo rabbitmq-server
            ;;
        up)
            if [ "$(pick_runner 2>/dev/null)" = local ]; then
                have nginx || echo nginx
                # A local Redis only for a local REDIS_URL: up.sh refuses a remote one that does not answer.
                have redis-server || ! py -m deploy.redisurl is-local "$REDIS_URL" || redis_answers || echo redis-server
            fi
            ;;
        *) die "usage: deploy/system_deps.sh test|up" ;;
    esac
    return 0
}

[ $# -eq 1 ] || die "usage: deploy/system_deps.sh test|up"
target=$1
needs=$(needs_for "$target")
if [ -n "$needs" ]; then
    mapfile -t missing <<<"$needs"
    [ "$(id -u)" -eq 0 ] || die "make $target needs ${missing[*]}, missing here. Install, then run make $target again:
  sudo apt-get install -y ${missing[*]}"
    have apt-get || die "make $target needs ${missing[*]}, missing here, and there is no apt-get: install with the system's package manager"
    say "make $target needs ${missing[*]}, missing here: apt-get install"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    for program in "${missing[@]}"; do
        have "$program" || die "apt-get installed $program, but it is neither on PATH ($PATH) nor in $SBIN_PATH"
    done
fi
[ "$target" != test ] || ensure_rabbitmq
