#!/usr/bin/env bash
# Build and run every attn example (Release, tests and benchmarks off), among them
# greedy_decoding (KV-cache decoding against recomputation) and attention_heatmap (a PNG).
# Usage: bash examples/run.sh     (from any directory; builds into <repo>/build)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build"
jobs="$(nproc 2>/dev/null || echo 2)"

bash "$root/cmake/install-deps.sh" examples

cmake -S "$root" -B "$build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DATTN_BUILD_EXAMPLES=ON \
  -DATTN_BUILD_TESTS=OFF \
  -DATTN_BUILD_BENCHMARKS=OFF \
  -DATTN_WERROR=OFF
cmake --build "$build" -j"$jobs"

# run_examples prints "=== example: <name>" before each one and stops at the
# first failure. They run in build/examples/, where attention_heatmap writes its PNG.
cmake --build "$build" --target run_examples

heatmap="$build/examples/attention_heatmap.png"
if [ -f "$heatmap" ]; then
  echo "examples/run.sh: attention_heatmap's picture: $heatmap"
fi
