#!/usr/bin/env bash
# Build and test prerequisites a fresh Debian machine may lack, installed only when missing:
# the C/C++ toolchain and headers librdkafka's cmake build needs (cmake, g++, libcurl, OpenSSL, zlib,
# pkg-config), curl (readiness probes), python3-venv (go-task, the S3 check and the Standard
# Webhooks verifier run in venvs) and, for `lint`, rustfmt and clippy.
# Usage: scripts/stack/prereqs.sh {build|lint}
# shellcheck source=scripts/stack/lib.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

apt_install() {
  local sudo=()
  [[ $EUID -eq 0 ]] || sudo=(sudo)
  say "installing (apt): $*"
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

build() {
  local missing=() pkg
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  command -v c++ >/dev/null 2>&1 || missing+=(g++)
  command -v make >/dev/null 2>&1 || missing+=(make)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
  for pkg in libcurl4-openssl-dev libssl-dev zlib1g-dev; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  python3 -c 'import ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
  if ((${#missing[@]})); then
    apt_install "${missing[@]}"
  fi
  command -v cargo >/dev/null 2>&1 || die "cargo is not installed (the README's prerequisites: Rust via rustup)"
}

lint() {
  build
  command -v rustup >/dev/null 2>&1 || die "rustup is not installed (needed for rustfmt and clippy)"
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
}

case "${1:-}" in
  build) build ;;
  lint) lint ;;
  *) echo "usage: $0 {build|lint}" >&2; exit 2 ;;
esac
