#!/usr/bin/env bash
# Builds a Debian package of tandem with Debian's own dpkg-deb: the binary,
# the systemd unit, /etc/tandem/agent.env (a conffile: upgrades keep an
# operator's edits), the manual pages and the shell completions.
#
#   packaging/deb/build.sh [BINARY] [OUTDIR]
#
# BINARY defaults to target/release/tandem (built with `cargo build
# --release` if missing); OUTDIR to target/deb. Prints the package's path.
# Installing it does not start the agent: edit /etc/tandem/agent.env, then
# `systemctl enable --now tandem-agent`.
set -euo pipefail
cd "$(dirname "$0")/../.."

bin="${1:-target/release/tandem}"
out="${2:-target/deb}"
if [ ! -x "$bin" ]; then
  if [ "$bin" = target/release/tandem ]; then
    cargo build --release -p tandem
  else
    echo "error: $bin is not an executable" >&2
    exit 1
  fi
fi
command -v dpkg-deb >/dev/null || { echo "error: dpkg-deb is required (apt-get install dpkg)" >&2; exit 1; }

version="$("$bin" --version | awk '{print $2}')"
arch="$(dpkg --print-architecture)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
chmod 755 "$stage"

install -D -m 755 "$bin" "$stage/usr/bin/tandem"
install -D -m 644 packaging/systemd/tandem-agent.service "$stage/lib/systemd/system/tandem-agent.service"
install -D -m 600 packaging/systemd/agent.env.example "$stage/etc/tandem/agent.env"
mkdir -p "$stage/usr/share/man/man1"
"$bin" man --dir "$stage/usr/share/man/man1"
gzip -9n "$stage"/usr/share/man/man1/*.1
install -d "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions" "$stage/usr/share/fish/vendor_completions.d"
"$bin" completions bash >"$stage/usr/share/bash-completion/completions/tandem"
"$bin" completions zsh >"$stage/usr/share/zsh/vendor-completions/_tandem"
"$bin" completions fish >"$stage/usr/share/fish/vendor_completions.d/tandem.fish"
install -D -m 644 README.md "$stage/usr/share/doc/tandem/README.md"
install -D -m 644 examples/quickstart.toml "$stage/usr/share/doc/tandem/examples/quickstart.toml"
install -D -m 644 examples/haproxy.cfg "$stage/usr/share/doc/tandem/examples/haproxy.cfg"
install -D -m 644 examples/haproxy-wait.lua "$stage/usr/share/doc/tandem/examples/haproxy-wait.lua"

mkdir -p "$stage/DEBIAN"
size="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
cat >"$stage/DEBIAN/control" <<EOF
Package: tandem
Version: $version
Section: admin
Priority: optional
Architecture: $arch
Maintainer: tandem developers <tandem@localhost>
Installed-Size: $size
Depends: libc6
Recommends: systemd
Suggests: etcd-server, haproxy
Description: high availability for multi-component services
 One topology, an agent per host, a controller that decides, fencing
 epochs so that two primaries never act at once; warm, hot and cold
 standby, singletons, N+1 pools and worker pools; an HTTP API, a CLI and
 a web dashboard.
EOF
echo /etc/tandem/agent.env >"$stage/DEBIAN/conffiles"
cat >"$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
EOF
cat >"$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload || true
fi
EOF
chmod 755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/postrm"

mkdir -p "$out"
deb="$out/tandem_${version}_${arch}.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
echo "$deb"
