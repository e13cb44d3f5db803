#!/usr/bin/env bash
# One-time set-up of a fresh Debian 12 machine for building and testing Cairn (run as root).
# Installs the system packages the build, the host tests and the QEMU tests need.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
packages=(
  # build
  pkg-config libtss2-dev protobuf-compiler
  # host integration tests: a real TPM
  swtpm swtpm-tools tpm2-tools
  # host integration tests: LUKS2 data partition on a plain file (no device-mapper needed)
  cryptsetup-bin
  # host integration tests: apps on real containerd + runc, images served by a local registry
  containerd runc busybox-static docker-registry containernetworking-plugins
  # per-app networks: the CNI bridge/portmap plugins and the tests need iptables and ip;
  # the device firewall test loads its nftables table in a network namespace
  iptables iproute2 nftables
  # cairn-pe checks its PCR 11 prediction against systemd-measure (in the systemd package)
  systemd
  # central's web console test: headless Debian Chromium driven by playwright-core from npm
  # (central/tests/console.rs installs the pinned playwright-core under target/console-test)
  chromium nodejs
  # central's second store: the whole central suite also runs on PostgreSQL
  # (dev/test-postgres.sh starts a throwaway cluster for it, over TLS with its own test CA)
  postgresql openssl
)
# Debian's nodejs comes without npm; NodeSource's nodejs bundles it and conflicts with the
# Debian npm package, so ask for npm only when the command is missing.
command -v npm >/dev/null || packages+=(npm)
if [ -f "$here/image-packages.txt" ]; then
  mapfile -t extra < <(grep -v '^\s*#' "$here/image-packages.txt" | grep -v '^\s*$')
  packages+=("${extra[@]}")
fi
missing=()
for p in "${packages[@]}"; do
  # "name/release" pins a release (e.g. qemu-utils from bookworm where the machine ships the
  # backport, which conflicts with bookworm's qemu-system-x86): always handed to apt, which
  # does nothing when that version is already installed.
  if [[ "$p" == */* ]] || ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends --allow-downgrades "${missing[@]}"
else
  echo "setup: all ${#packages[@]} packages present"
fi
command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
# The throwaway PostgreSQL cluster central's tests use (idempotent; prints its URL).
bash "$here/test-postgres.sh" >/dev/null
