#!/usr/bin/env bash
# Run a command (the test suite) with the Redis at REDIS_URL, else a private redis-server for the run.
set -euo pipefail
# shellcheck source=deploy/common.sh
. "$(dirname "$0")/common.sh"

[ $# -gt 0 ] || die "usage: deploy/with_redis.sh COMMAND [ARGS...]"
if py -m deploy.redisurl ping "$REDIS_URL"; then
    TEST_REDIS_URL=${TEST_REDIS_URL:-$(py -m deploy.redisurl with-db "$REDIS_URL" 15)}
    export TEST_REDIS_URL
    say "Redis answers at $REDIS_URL (tests use $TEST_REDIS_URL)"
    exec "$@"
fi
command -v redis-server >/dev/null 2>&1 || die "no Redis answers at $REDIS_URL and redis-server is not installed
  (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)"
port=$(py -m deploy.stack free-port)
dir=$(mktemp -d "${TMPDIR:-/tmp}/test-redis.XXXXXX")
say "no Redis answers at $REDIS_URL: starting a private redis-server on 127.0.0.1:$port for this run"
redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$dir" --logfile "$dir/redis.log" &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null; rm -rf "$dir"' EXIT
export REDIS_URL=redis://127.0.0.1:$port/0 TEST_REDIS_URL=redis://127.0.0.1:$port/15
py -m deploy.redisurl wait "$REDIS_URL" --timeout 10 || die "redis-server did not answer on port $port: $(cat "$dir/redis.log")"
"$@"
