#!/bin/sh
# Entrypoint of the engine images.
#   no arguments, or only options (`docker run engine:2.3.1 --turn-ms 20`):
#       exec engine serve --release $ENGINE_RELEASE --brain /data/brain.sqlite
#                         --host 127.0.0.1 --port ${ENGINE_PORT:-8000} [options]
#   anything else (`docker run engine:2.3.1 engine releases --json`, `sqlite3 ...`): run it.
# `exec`, so the Engine is PID 1 and receives docker stop's SIGTERM itself (graceful drain, exit 0).
set -eu
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
  if [ -z "${ENGINE_RELEASE:-}" ]; then
    echo "engine-entrypoint: ENGINE_RELEASE is not set (use an engine:<version> image or -e ENGINE_RELEASE=...)" >&2
    exit 2
  fi
  exec engine serve \
    --release "$ENGINE_RELEASE" \
    --brain "${SQLITE_DB_PATH:-/data/brain.sqlite}" \
    --host "${ENGINE_HOST:-127.0.0.1}" \
    --port "${ENGINE_PORT:-8000}" \
    "$@"
fi
exec "$@"
