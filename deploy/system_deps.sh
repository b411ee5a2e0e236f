#!/usr/bin/env bash
# The system programs a make target needs, installed when missing.
#
#   deploy/system_deps.sh test   chromium (the page tests; `playwright install` cannot
#                                download one), nginx (the web tier), redis-server unless
#                                a Redis answers at REDIS_URL (deploy/with_redis.sh starts
#                                a private one), and RabbitMQ for the broker tests unless
#                                one answers at TEST_AMQP_URL (`rabbitmq-server -detached`)
#   deploy/system_deps.sh up     for a stack of local processes: nginx, and redis-server
#                                when no Redis answers at a local REDIS_URL
#
# As root, what is missing is installed with apt-get (non-interactive, without
# recommended packages). Otherwise the script stops at once and prints the
# command to run: it never asks for a password. A new need is one line in
# needs_for below; each program's Debian package has the program's name.
set -euo pipefail
# shellcheck source=deploy/common.sh
. "$(dirname "$0")/common.sh"

# Debian puts nginx and rabbitmq-server in sbin, off a user's PATH (deploy/stack.py looks there too).
SBIN_PATH=${SBIN_PATH:-/usr/local/sbin:/usr/sbin}
have() { PATH="$PATH:$SBIN_PATH" command -v "$1" >/dev/null 2>&1; }

redis_answers() { py -m deploy.redisurl ping "$REDIS_URL"; }

TEST_AMQP_URL=${TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672//}
#: seconds to wait for a RabbitMQ this script started
RABBITMQ_START_TIMEOUT=${RABBITMQ_START_TIMEOUT:-90}
amqp_answers() { py -m deploy.amqpurl ping "$TEST_AMQP_URL"; }

# The tests' RabbitMQ: nothing to do when one answers at TEST_AMQP_URL; a local
# one is started (as root), a remote one is left to its owner (the tests skip).
ensure_rabbitmq() {
    amqp_answers && return 0
    if ! py -m deploy.amqpurl is-local "$TEST_AMQP_URL"; then
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

# Does `make up` run the stack as local processes (deploy/up.sh's choice)?
local_stack() {
    case ${STACK:-auto} in
        local) return 0 ;;
        auto) ! docker_usable ;;
        *) return 1 ;;
    esac
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
            if local_stack; then
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
