#!/usr/bin/env bash
# tandem's whole test suite, on a fresh Debian machine or a developer's.
#
# Installs what the tests need (none of it is optional: a test never skips
# its real work because something is missing), then runs formatting,
# lints and every test of the workspace: core table and property tests,
# the store conformance suite, the API over HTTP, and end-to-end tests
# that run the real `tandem` binary with real processes and signals.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# Debian packages the tests use: etcd for the etcd backend's conformance and
# fault tests (a real 3-member cluster), protoc to build its client,
# PostgreSQL for the hot-standby sink (each suite starts its own server),
# and Prometheus (with promtool) to check examples/prometheus and scrape a
# real `tandem up`. The tests start their own Prometheus on a free port:
# without systemd, installing the package starts no service (invoke-rc.d
# finds no runlevel); with systemd, Debian's service listens on :9090 and
# its node exporter on :9100, ports no test uses. systemd for
# `systemd-analyze verify` of packaging/systemd (the unit is checked, not
# started). Chromium and chromedriver for the dashboard test
# (crates/cli/tests/dashboard.rs drives the real page through WebDriver).
APT_PACKAGES=(etcd-server etcd-client protobuf-compiler postgresql iptables iproute2 haproxy prometheus systemd chromium chromium-driver)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi

command -v cargo >/dev/null || { echo "cargo is required (rustup.rs)"; exit 1; }

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

log "cargo test"
cargo test --workspace --all-targets 2>&1 | tee target/test-output.txt
# Doc tests too (cargo test --all-targets leaves them out).
cargo test --workspace --doc

# One closing line that counts every test that ran.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' target/test-output.txt
