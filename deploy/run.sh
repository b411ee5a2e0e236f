#!/usr/bin/env bash
# Start one program of the local stack; supervisord runs `deploy/run.sh NAME`.
#
# The project variables come from run/stack.env, which `make up` rewrites, not
# from supervisord's own environment: so a later `make up` with other settings
# (USE_BATCH_PROCESSING=true, say) only has to restart the programs.
set -euo pipefail
# shellcheck source=deploy/common.sh
. "$(dirname "$0")/common.sh"

if [ -f "$RUN_DIR/stack.env" ]; then
    while IFS= read -r name; do
        [[ $name =~ $STACK_ENV_RE ]] && unset "$name"
    done < <(compgen -e)
    # shellcheck source=/dev/null
    . "$RUN_DIR/stack.env"
fi
export PYTHONUNBUFFERED=1
cd "$REPO_DIR"

case "${1:-}" in
    web)
        exec "$VENV_BIN/gunicorn" -c webapp/gunicorn.conf.py --bind "${BIND_HOST:-127.0.0.1}:${WEB_PORT:-8000}" \
            webapp.wsgi:app ;;
    worker)
        exec "$VENV_BIN/python" -m workers ;;
    flower)
        exec "$VENV_BIN/celery" -A workers flower --port="${FLOWER_PORT:-5555}" \
            --address="${BIND_HOST:-127.0.0.1}" ${FLOWER_BASIC_AUTH:+"--basic-auth=$FLOWER_BASIC_AUTH"} ;;
    redis)
        port=$(py -m deploy.redisurl port "$REDIS_URL")
        exec redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no --dir "$RUN_DIR" ;;
    *)
        die "usage: deploy/run.sh web|worker|flower|redis" ;;
esac
