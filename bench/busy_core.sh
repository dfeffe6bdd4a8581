#!/usr/bin/env bash
# Decoding with another process busy on one core: examples/greedy_decoding's model, its
# KV-cache path (ms/token of (a)), on 1 thread and on all threads, with a busy loop pinned
# to the last core (taskset) and without it. Runs alternate, and the medians are printed.
#
#   bench/busy_core.sh [build dir (default: build)] [runs (default: 7)]
set -euo pipefail
build="${1:-build}"
runs="${2:-7}"
exe="$build/examples/greedy_decoding"
[ -x "$exe" ] || { echo "busy_core: $exe not found (build the examples first)" >&2; exit 1; }
cores="$(nproc)"
last=$((cores - 1))

ms_per_token() {  # threads -> ms/token of the KV-cache path
  "$exe" --threads "$1" --new-tokens 256 | sed -n 's/^(a) KV caches.*: \([0-9.]*\) ms\/token.*/\1/p'
}
median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

measure() {  # label
  local one="" all=""
  for _ in $(seq "$runs"); do
    one+="$(ms_per_token 1)"$'\n'
    all+="$(ms_per_token "$cores")"$'\n'
  done
  printf '%-28s 1 thread %s ms/token, %d threads %s ms/token\n' "$1" \
    "$(printf '%s' "$one" | median)" "$cores" "$(printf '%s' "$all" | median)"
}

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $cores cores; $runs runs each, medians"
measure "quiet:"
taskset -c "$last" bash -c 'while :; do :; done' &
busy=$!
trap 'kill $busy 2>/dev/null || true' EXIT
measure "core $last busy (busy loop):"
