#!/usr/bin/env bash
# Builds tandem and runs a topology on this machine (default: the
# quickstart example), with the embedded store and the API on
# 127.0.0.1:7420. Installs the one build tool tandem needs beyond Rust:
# protoc (Debian's protobuf-compiler), for the etcd client.
#
#   ./scripts/up.sh                          # examples/quickstart.toml
#   ./scripts/up.sh examples/wfm.toml        # another topology
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v protoc >/dev/null; then
  echo "installing protobuf-compiler (protoc), needed to build the etcd client…"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq protobuf-compiler
fi
command -v cargo >/dev/null || { echo "cargo is required (rustup.rs)"; exit 1; }

topology="${1:-examples/quickstart.toml}"
shift || true
exec cargo run --release -- up "$topology" "$@"
