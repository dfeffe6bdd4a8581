#!/usr/bin/env bash
# Build everything (tests, examples, benchmarks; warnings are errors) and run
# the test suite. Exit status is ctest's.
# Usage: bash tests/run.sh     (from any directory; builds into <repo>/build)
# Extra arguments are passed to ctest, e.g. bash tests/run.sh -R header
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$root/build"
jobs="$(nproc 2>/dev/null || echo 2)"

bash "$root/cmake/install-deps.sh" tests

cmake -S "$root" -B "$build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DATTN_BUILD_TESTS=ON \
  -DATTN_BUILD_EXAMPLES=ON \
  -DATTN_BUILD_BENCHMARKS=ON \
  -DATTN_INSTALL=ON \
  -DATTN_WERROR=ON
cmake --build "$build" -j"$jobs"

status=0
ctest --test-dir "$build" --output-on-failure -j"$jobs" "$@" || status=$?
exit "$status"
