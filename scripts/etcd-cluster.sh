#!/usr/bin/env bash
# A 3-member etcd cluster on loopback, for trying tandem's etcd store by hand
# (the tests start their own clusters and do not need this).
#
#   scripts/etcd-cluster.sh start DIR BASEPORT   # members e1..e3, data and logs in DIR
#   scripts/etcd-cluster.sh stop DIR
#
# Member i (1..3) listens for clients on BASEPORT+i and for peers on
# BASEPORT+10+i. `start` waits until every member is healthy, then prints the
# endpoints and the store URL (etcd://...) to pass to `tandem --store`.
set -euo pipefail

usage() {
  echo "usage: $0 start DIR BASEPORT | stop DIR" >&2
  exit 2
}

members=(1 2 3)

start() {
  local dir=$1 base=$2
  [[ $base =~ ^[0-9]+$ ]] && ((base >= 1024 && base + 13 <= 65535)) ||
    { echo "BASEPORT must be a number from 1024 to 65522, got '$base'" >&2; exit 2; }
  command -v etcd >/dev/null || { echo "etcd is not installed: apt-get install etcd-server" >&2; exit 1; }
  command -v etcdctl >/dev/null || { echo "etcdctl is not installed: apt-get install etcd-client" >&2; exit 1; }
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if compgen -G "$dir/e*.pid" >/dev/null; then
    echo "$dir already holds a cluster (pid files); run: $0 stop $dir" >&2
    exit 1
  fi
  local initial="" endpoints="" url=""
  for i in "${members[@]}"; do
    initial+="${initial:+,}e$i=http://127.0.0.1:$((base + 10 + i))"
    endpoints+="${endpoints:+,}http://127.0.0.1:$((base + i))"
    url+="${url:+,}127.0.0.1:$((base + i))"
  done
  for i in "${members[@]}"; do
    local client="http://127.0.0.1:$((base + i))" peer="http://127.0.0.1:$((base + 10 + i))"
    nohup etcd --name "e$i" --data-dir "$dir/e$i" \
      --listen-client-urls "$client" --advertise-client-urls "$client" \
      --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
      --initial-cluster "$initial" --initial-cluster-token "tandem-$base" \
      --initial-cluster-state new --pre-vote --logger zap --log-outputs stderr \
      >>"$dir/e$i.log" 2>&1 </dev/null &
    echo $! >"$dir/e$i.pid"
  done
  local deadline=$((SECONDS + 30))
  until ETCDCTL_API=3 etcdctl --endpoints "$endpoints" --command-timeout=2s endpoint health >/dev/null 2>&1; do
    if ((SECONDS > deadline)); then
      echo "the cluster is not healthy after 30 s; logs in $dir/e*.log:" >&2
      tail -n 5 "$dir"/e*.log >&2 || true
      stop "$dir"
      exit 1
    fi
    for i in "${members[@]}"; do
      kill -0 "$(cat "$dir/e$i.pid")" 2>/dev/null ||
        { echo "member e$i exited; its log:" >&2; tail -n 20 "$dir/e$i.log" >&2; stop "$dir"; exit 1; }
    done
    sleep 0.2
  done
  echo "endpoints: $endpoints"
  echo "store URL: etcd://$url"
}

stop() {
  local dir=$1 pid
  [ -d "$dir" ] || { echo "no such directory: $dir" >&2; exit 1; }
  for f in "$dir"/e*.pid; do
    [ -e "$f" ] || continue
    pid=$(cat "$f")
    # Only an etcd process we started (the pid may have been reused).
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = etcd ]; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
  echo "stopped the cluster in $dir (data and logs kept)"
}

case "${1:-}" in
  start) [ $# -eq 3 ] || usage; start "$2" "$3" ;;
  stop) [ $# -eq 2 ] || usage; stop "$2" ;;
  *) usage ;;
esac
