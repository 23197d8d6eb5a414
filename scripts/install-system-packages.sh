#!/usr/bin/env bash
# System packages the test suite uses (sqlite3 CLI for baselines, strace for fault injection).
# Idempotent; needs root or sudo on a Debian-like machine.
set -euo pipefail
packages=(sqlite3 strace make)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
