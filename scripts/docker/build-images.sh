#!/usr/bin/env bash
# Build the engine:<version> images (one per reference Engine release) without any registry:
#
#   1. backout-base:bookworm  - a minimal Debian bookworm with python3 (3.11), python3-venv,
#                               ca-certificates and sqlite3, made with debootstrap from the Debian
#                               mirror in /etc/apt/sources.list* and `docker import`ed. The rootfs
#                               tarball is cached in $CACHE_DIR/base-bookworm.tar.
#   2. backout-engine-app:latest - docker/engine/Dockerfile: a venv with the reference Engine's wheel and its
#                               runtime dependencies (cp311 manylinux wheels fetched on the host
#                               from PyPI, pinned to the versions in .venv), built offline.
#   3. engine:<version>       - for every release of `engine releases --json`: the app image plus
#                               ENV ENGINE_RELEASE=<version> (docker/engine/release.Dockerfile).
#
# Usage: scripts/docker/build-images.sh [--push] [--registry HOST:PORT] [--rebuild-base] [--no-cache]
#   --push          also tag and push <registry>/engine:<version> (default registry 127.0.0.1:5000)
#   --rebuild-base  debootstrap the base image again (ignore the cached tarball and image)
#   --no-cache      rebuild the app image without docker's layer cache
# Needs the daemon of scripts/docker/setup.sh (DOCKER_HOST from /run/backout-docker.env).
# Re-runs with nothing changed take a few seconds: every step is skipped or a layer-cache hit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=scripts/docker/common.sh
. "$HERE/common.sh"

push=0
registry="$REGISTRY_ADDR"
rebuild_base=0
no_cache=()
while [ $# -gt 0 ]; do
  case "$1" in
    --push) push=1 ;;
    --registry) registry="$2"; shift ;;
    --registry=*) registry="${1#*=}" ;;
    --rebuild-base) rebuild_base=1 ;;
    --no-cache) no_cache=(--no-cache) ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { printf '[build-images] ERROR: %s\n' "$*" >&2; exit 1; }
t0=$SECONDS

if [ -z "${DOCKER_HOST:-}" ]; then
  export DOCKER_HOST="$BACKOUT_DOCKER_HOST"
fi
timeout 10 docker info >/dev/null 2>&1 \
  || die "no Docker daemon at $DOCKER_HOST: run scripts/docker/setup.sh first"
export DOCKER_BUILDKIT=0   # classic builder: what Debian's dockerd 20.10 has without buildx
export DOCKER_CLI_HINTS=false

VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/pip" ] || [ ! -x "$VENV/bin/engine" ]; then
  log "no $VENV yet: make setup"
  make -C "$ROOT" setup >&2
fi

BASE_IMAGE="backout-base:bookworm"
APP_IMAGE="backout-engine-app:latest"
SUITE="bookworm"
mkdir -p "$CACHE_DIR"

# --- 1. base image ------------------------------------------------------------------------------
debian_mirror() {
  if [ -n "${BACKOUT_DEBIAN_MIRROR:-}" ]; then echo "$BACKOUT_DEBIAN_MIRROR"; return; fi
  # The first .../debian URI (not -security, -ports, ...) of the host's apt sources, in either
  # the one-line or the deb822 format.
  local uri
  local apt="${BACKOUT_APT_DIR:-/etc/apt}"
  uri="$(cat "$apt"/sources.list "$apt"/sources.list.d/*.list "$apt"/sources.list.d/*.sources \
           2>/dev/null | grep -v '^[[:space:]]*#' \
         | grep -oE '(https?|file)://[^[:space:]]*/debian/?([[:space:]]|$)' | head -n 1 | tr -d '[:space:]' || true)"
  # No guess at a public mirror: only what this machine is configured to use.
  [ -n "$uri" ] || die "no Debian mirror: the apt sources of this machine ($apt/sources.list*) name no \
.../debian URI; set BACKOUT_DEBIAN_MIRROR=<mirror URL> to build the base image"
  echo "$uri"
}

base_tar="$CACHE_DIR/base-$SUITE.tar"
if [ "$rebuild_base" = 1 ]; then
  rm -f "$base_tar"
  docker image rm "$BASE_IMAGE" >/dev/null 2>&1 || true
fi
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "$BASE_IMAGE exists"
else
  if [ ! -s "$base_tar" ]; then
    [ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
    command -v debootstrap >/dev/null || die "debootstrap missing: run scripts/docker/setup.sh"
    mirror="$(debian_mirror)"
    rootfs="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
    trap 'rm -rf "$rootfs"' EXIT
    log "debootstrap $SUITE from $mirror (about a minute)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,sqlite3 \
      "$SUITE" "$rootfs" "$mirror" > "$CACHE_DIR/debootstrap.log" 2>&1 \
      || { tail -n 30 "$CACHE_DIR/debootstrap.log" >&2; die "debootstrap failed (see $CACHE_DIR/debootstrap.log)"; }
    # Slim it: downloaded .debs, apt lists, docs, man pages, locales (about 140 MB of 280).
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
           "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
           "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    # /dev, /proc, /sys are provided by the runtime; a container must not see the host's id.
    tar --numeric-owner --xattrs -C "$rootfs" \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' \
        --exclude='./etc/machine-id' --exclude='./etc/hostname' \
        -cf "$base_tar.tmp" .
    mv -f "$base_tar.tmp" "$base_tar"
    rm -rf "$rootfs"
    trap - EXIT
  fi
  log "docker import $base_tar -> $BASE_IMAGE"
  docker import --message "debootstrap --variant=minbase $SUITE (backout)" \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
    "$base_tar" "$BASE_IMAGE" >/dev/null
fi

# --- 2. the build context: Dockerfile, entrypoint, dependency wheels, the Engine's wheel ---------
ctx="$CACHE_DIR/engine-context"
mkdir -p "$ctx/deps" "$ctx/app"
install -m 0644 "$ROOT/docker/engine/Dockerfile" "$ctx/Dockerfile"
install -m 0755 "$ROOT/docker/engine/entrypoint.sh" "$ctx/entrypoint.sh"

# The reference Engine's wheel (reference-engine/, its own distribution: the image holds the Engine,
# not backout): rebuilt only when its sources change (key = hash of what goes into the wheel).
ENGINE_DIR="$ROOT/reference-engine"
src_files() {
  (cd "$ENGINE_DIR" && {
    for f in pyproject.toml setup.cfg setup.py MANIFEST.in README.md LICENSE LICENSE.txt; do
      if [ -f "$f" ]; then echo "$f"; fi
    done
    find src -type f -not -path '*/__pycache__/*' -not -path '*.egg-info/*' -not -name '*.pyc'
  } | LC_ALL=C sort)
}
app_key="$(cd "$ENGINE_DIR" && src_files | xargs -d '\n' sha256sum | sha256sum | cut -c1-64)"
if [ "$(cat "$ctx/app/.key" 2>/dev/null)" != "$app_key" ] || ! ls "$ctx"/app/*.whl >/dev/null 2>&1; then
  log "building the reference Engine's wheel"
  stage="$(mktemp -d)"
  (cd "$ENGINE_DIR" && src_files | xargs -d '\n' cp --parents -t "$stage")
  rm -f "$ctx"/app/*.whl
  # A copy of the tree: no stale build/ or egg-info from the checkout ends up in the wheel, and
  # the checkout is left untouched. SOURCE_DATE_EPOCH: the same sources give the same bytes.
  SOURCE_DATE_EPOCH=315532800 "$VENV/bin/pip" wheel --quiet --disable-pip-version-check \
    --no-deps --wheel-dir "$ctx/app" "$stage" 2>&1 | quiet_pip >&2
  rm -rf "$stage"
  echo "$app_key" > "$ctx/app/.key"
fi

# Dependency wheels for the image's CPython 3.11 on glibc 2.36, at the versions the tests use
# (.venv's pip freeze as constraints); fetched again only when those versions change.
constraints="$ctx/constraints.txt"
"$VENV/bin/pip" freeze --exclude-editable --disable-pip-version-check 2>/dev/null \
  | grep -vE '^(#|-e |backout(-engine)?([=@ ]|$))' > "$constraints" || true
app_whl="$(find "$ctx/app" -maxdepth 1 -name "*.whl" | head -n 1)"
requires="$("$VENV/bin/python" - "$app_whl" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    print("\n".join(l for l in z.read(meta).decode().splitlines() if l.startswith("Requires-Dist:")))
PY
)"
deps_key="$(printf '%s\n%s\n' "$(cat "$constraints")" "$requires" | sha256sum | cut -c1-64)"
if [ "$(cat "$ctx/deps/.key" 2>/dev/null)" != "$deps_key" ]; then
  log "downloading dependency wheels (cp311, manylinux x86_64)"
  rm -f "$ctx"/deps/*.whl
  # pip does not widen --platform to older manylinux tags by itself: list glibc 2.36 down to 2.5.
  platforms=()
  for minor in $(seq 36 -1 5); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
  "$VENV/bin/pip" download --quiet --disable-pip-version-check \
    --only-binary :all: --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none \
    "${platforms[@]}" \
    --constraint "$constraints" --dest "$ctx/deps" "$app_whl" 2>&1 | quiet_pip >&2
  rm -f "$ctx"/deps/backout_engine-*.whl
  echo "$deps_key" > "$ctx/deps/.key"
fi

# --- 3. the application image -------------------------------------------------------------------
log "docker build $APP_IMAGE"
# (--quiet, and stderr kept aside: docker CLI 23+ warns on every classic build that it is deprecated)
if ! docker build --quiet --network none ${no_cache[@]+"${no_cache[@]}"} -t "$APP_IMAGE" "$ctx" >/dev/null 2> "$ctx/build.log"; then
  cat "$ctx/build.log" >&2
  docker build --network none -t "$APP_IMAGE" "$ctx" >&2 || true   # shows the failing step
  die "building $APP_IMAGE failed"
fi

# --- 4. one engine:<version> per release --------------------------------------------------------
# The release list comes from the image itself (the same source as .venv's `engine releases`), which
# also proves the entrypoint's pass-through mode works.
releases_json="$(docker run --rm --network none "$APP_IMAGE" engine releases --json)"
mapfile -t releases < <(python3 -c '
import json, sys
for r in json.loads(sys.stdin.read()):
    print(r["version"], r.get("migration_head", ""))
' <<< "$releases_json")
[ ${#releases[@]} -gt 0 ] || die "engine releases --json listed no release"

built=()
for line in "${releases[@]}"; do
  version="${line%% *}"; head="${line#* }"
  docker build --quiet --network none \
    --build-arg ENGINE_RELEASE="$version" --build-arg ENGINE_MIGRATION_HEAD="$head" \
    -t "engine:$version" - < "$ROOT/docker/engine/release.Dockerfile" >/dev/null 2> "$ctx/build.log" \
    || { cat "$ctx/build.log" >&2; die "building engine:$version failed"; }
  built+=("engine:$version")
  if [ "$push" = 1 ]; then
    docker tag "engine:$version" "$registry/engine:$version"
    docker push --quiet "$registry/engine:$version" >/dev/null \
      || die "docker push $registry/engine:$version failed (is the registry of setup.sh running?)"
    built+=("$registry/engine:$version")
  fi
done

log "done in $((SECONDS - t0)) s: ${built[*]}"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.ID}}  {{.Size}}' engine >&2
