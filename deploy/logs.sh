#!/usr/bin/env bash
# `make logs`: the last TAIL lines of each service's log; FOLLOW=1 keeps following them.
set -euo pipefail
# shellcheck source=deploy/common.sh
. "$(dirname "$0")/common.sh"

case $FOLLOW in 1 | true | yes) follow=true ;; *) follow=false ;; esac
if [ "$(stack_runner)" = docker ]; then
    cd "$REPO_DIR"
    if $follow; then exec docker compose logs --tail="$TAIL" --follow; fi
    exec docker compose logs --tail="$TAIL"
fi
logs=()
for name in $(py -c 'from deploy.stack import SERVICES; print(*SERVICES)'); do
    [ -f "$RUN_DIR/logs/$name.log" ] && logs+=("$RUN_DIR/logs/$name.log")
done
[ ${#logs[@]} -gt 0 ] || die "no logs in ${RUN_DIR}/logs: start the stack with make up"
if $follow; then exec tail -n "$TAIL" -F "${logs[@]}"; fi
for log in "${logs[@]}"; do
    printf '==> %s <==\n' "${log#"$REPO_DIR"/}"
    tail -n "$TAIL" "$log"
    echo
done
