#!/usr/bin/env bash
# The collector's loopback benchmark with the server and the load generator on separate cores:
# the server thread (`collector-serve`, a single-threaded runtime) pinned to one CPU, every other
# thread of the process (the clients and the sink's consumer) to another, so that "per core of
# the server" is literal. Linux only (taskset, /proc/<pid>/task).
#
#   scripts/collector-bench-pinned.sh [SERVER_CPU] [CLIENT_CPU] -- [bench options]
#   e.g. scripts/collector-bench-pinned.sh 0 1 -- --requests 600000 --events-per-request 1
#
# Builds target/release/clickheatmap-collector first if it is missing. Threads are pinned once
# they exist (a few hundred milliseconds into the run); the report's server CPU seconds count
# the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."
server_cpu=${1:-0}
client_cpu=${2:-1}
shift $(( $# >= 2 ? 2 : $# ))
[ "${1:-}" = "--" ] && shift
target=${CARGO_TARGET_DIR:-target}
binary="$target/release/clickheatmap-collector"
[ -x "$binary" ] || cargo build --release -p clickheatmap-collector
"$binary" bench "$@" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true' EXIT
# Wait for the server thread to exist, then pin every thread.
for _ in $(seq 100); do
  grep -qx collector-serve /proc/"$pid"/task/*/comm 2>/dev/null && break
  sleep 0.02
done
for task in /proc/"$pid"/task/*; do
  if [ "$(cat "$task/comm" 2>/dev/null)" = collector-serve ]; then
    taskset -p -c "$server_cpu" "$(basename "$task")" >/dev/null
  else
    taskset -p -c "$client_cpu" "$(basename "$task")" >/dev/null 2>&1 || true
  fi
done
wait "$pid"
trap - EXIT
