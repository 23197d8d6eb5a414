#!/usr/bin/env bash
# System packages the test suite uses (sqlite3 CLI for baselines, strace for fault injection,
# prometheus for the PrometheusSource tests, which start /usr/bin/prometheus themselves, chromium
# for the drill report test, which renders the page headless and screenshots it).
# Idempotent; needs root or sudo on a Debian-like machine.
set -euo pipefail
packages=(sqlite3 strace make)
# Installed without recommends (prometheus recommends prometheus-node-exporter, another daemon;
# chromium recommends a desktop's worth of fonts, sound and portal packages the headless test
# does not need).
bare_packages=(prometheus chromium)
# `dpkg -s` also succeeds for a removed package whose config files remain: ask for "installed".
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
missing=()
for p in "${packages[@]}"; do
  installed "$p" || missing+=("$p")
done
missing_bare=()
for p in "${bare_packages[@]}"; do
  installed "$p" || missing_bare+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || [ ${#missing_bare[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # The prometheus package's maintainer scripts would start its daemon on :9090 (the tests start
  # their own on a free port). A policy-rc.d that says 101 forbids starting services during the
  # install; where there is none, put one in place for the install (as scripts/docker/setup.sh).
  if [ ${#missing_bare[@]} -gt 0 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod 0755 /usr/sbin/policy-rc.d
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $sudo apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
  fi
  if [ ${#missing_bare[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing_bare[@]}"
    # The package enables its unit for the next boot; on a systemd machine, turn it off for good.
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
      $sudo systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
  fi
  if [ -n "$(trap -p EXIT)" ]; then
    $sudo rm -f /usr/sbin/policy-rc.d
    trap - EXIT
  fi
fi
