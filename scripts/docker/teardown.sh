#!/usr/bin/env bash
# Stop what scripts/docker/setup.sh started: the registry on 127.0.0.1:5000 and the private dockerd
# on unix:///run/backout-docker.sock (dockerd stops its containers and its containerd itself).
# Only those processes are stopped, by the pids in their pidfiles; a system Docker is left alone.
#
# Usage: scripts/docker/teardown.sh [--purge]
#   --purge  also delete the images, containers and volumes (/var/lib/backout-docker), the
#            registry's storage (/var/lib/backout-registry) and the build cache
#            (/var/cache/backout-docker: debootstrap tarball, wheels). Installed packages and
#            the compose plugin stay.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E "$0" "$@"
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/docker/common.sh
. "$HERE/common.sh"

purge=0
case "${1:-}" in
  --purge) purge=1 ;;
  "") ;;
  -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
esac

log() { printf '[docker-teardown] %s\n' "$*" >&2; }

# stop NAME PIDFILE SECONDS: SIGTERM, wait, then SIGKILL.
stop() {
  local name="$1" pidfile="$2" wait_s="$3" pid
  if [ ! -f "$pidfile" ]; then
    log "$name: not running (no $pidfile)"
    return 0
  fi
  pid="$(cat "$pidfile")"
  if ! kill -0 "$pid" 2>/dev/null; then
    log "$name: not running (stale $pidfile)"
    rm -f "$pidfile"
    return 0
  fi
  log "$name: stopping pid $pid"
  kill -TERM "$pid"
  for _ in $(seq 1 $((wait_s * 10))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name: still running after ${wait_s}s, SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

stop registry "$REGISTRY_PIDFILE" 10
# dockerd gives running containers their stop timeout (our engine images drain for up to 25 s).
stop dockerd "$DOCKERD_PIDFILE" 60
# containerd started by dockerd normally exits with it; make sure it did (pid from its pidfile).
ctd_pidfile="$DOCKERD_EXEC_ROOT/containerd/containerd.pid"
if [ -f "$ctd_pidfile" ]; then
  stop containerd "$ctd_pidfile" 10
fi
rm -f "$BACKOUT_DOCKER_ENV" "${BACKOUT_DOCKER_HOST#unix://}"

if [ "$purge" = 1 ]; then
  # Unmount anything left under the data-root (overlay mounts of a killed daemon) before rm -rf.
  if command -v findmnt >/dev/null; then
    findmnt -rn -o TARGET | grep -E "^($DOCKERD_DATA_ROOT|$DOCKERD_EXEC_ROOT)(/|$)" | sort -r \
      | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  fi
  log "deleting $DOCKERD_DATA_ROOT $DOCKERD_EXEC_ROOT $REGISTRY_DATA $CACHE_DIR"
  rm -rf "$DOCKERD_DATA_ROOT" "$DOCKERD_EXEC_ROOT" "$REGISTRY_DATA" "$CACHE_DIR"
fi
log "done"
