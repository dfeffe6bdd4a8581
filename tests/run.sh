#!/usr/bin/env bash
# Build and test attn four ways (this is the README's test command and CI's):
#   1. build/        everything (tests, examples, benchmarks, install, the MPI target whose
#                    test runs on 2 processes; warnings are errors),
#                    Release, the API documentation (Doxygen; an undocumented public
#                    declaration is an error), then the whole ctest suite; the kernel and
#                    reference tests also for the other machine kinds' instruction sets the CPU
#                    runs (ATTN_ISA_TESTS: zen4 and unpinned on AVX-512 with BF16, avx2 on AVX2),
#                    and the reference tests on every run-time kernel path the CPU runs
#                    besides the widest (ATTN_KERNEL_PATH_TESTS: baseline, avx2 on AVX-512, and
#                    avx512 where avx512bf16 is the widest);
#   2. build-asan/   tests and examples (attn_run) under AddressSanitizer +
#                    UndefinedBehaviorSanitizer (-fno-sanitize-recover=all, leaks checked),
#                    built without -march: the kernels run on the widest run-time path the
#                    CPU has (AVX-512 or AVX2 packet code under the sanitizers; on AVX-512 only
#                    test_kernel_paths compiles the avx2 path, which it runs); then their ctest
#                    suite (no packaging tests, no benchmarks; the example programs other
#                    than attn_run are not built: at their full sizes they take minutes each
#                    under the sanitizers and repeat forward passes that the unit tests'
#                    reference cases already run there);
#   3. build-tsan/   test_concurrency under ThreadSanitizer (without OpenMP);
#   4. build-fuzz/   when clang++ is installed: the libFuzzer target of the safetensors
#                    reader, fuzzed for ATTN_FUZZ_SECONDS (60) seconds from its seed corpus.
# Every stage runs even if an earlier one failed; the exit status is 0 only if all passed.
# Every ctest call has --no-tests=error: a filter that selects nothing fails the stage.
# Usage: bash tests/run.sh     (from any directory; builds into <repo>/build*)
# Extra arguments are passed to both ctest runs, e.g. bash tests/run.sh -R header
# Environment: ATTN_SANITIZERS=0 skips stages 2 and 3, ATTN_FUZZ_SECONDS=0 skips stage 4.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
jobs="$(nproc 2>/dev/null || echo 2)"
fuzz_seconds="${ATTN_FUZZ_SECONDS:-60}"

bash "$root/cmake/install-deps.sh" tests

status=0
# stage NAME COMMAND...: runs a stage, records a failure, prints its time. (Inside `cmd ||`
# errexit is off, so the stage functions chain their steps with &&.)
stage() {
  local name="$1" start=$SECONDS rc=0
  shift
  echo "=== tests/run.sh: $name"
  "$@" || rc=$?
  echo "=== tests/run.sh: $name: $([ "$rc" -eq 0 ] && echo passed || echo "FAILED ($rc)") in $((SECONDS - start)) s"
  [ "$rc" -eq 0 ] || status=1
}

# --- 1. Everything, warnings as errors -------------------------------------------------
# The instruction sets of the other machine kind (and of a user's AVX2 build) this CPU runs.
isa_tests=()
cpu_flags="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)"
has() { [[ " $cpu_flags " == *" $1 "* ]]; }
zen4=1  # every extension the zen4 build uses (tests/CMakeLists.txt)
for f in avx512f avx512cd avx512bw avx512dq avx512vl avx512ifma avx512vbmi avx512_vbmi2 avx512_vnni avx512_bitalg \
         avx512_vpopcntdq avx512_bf16 gfni vaes vpclmulqdq; do
  has "$f" || zen4=0
done
if [ "$zen4" = 1 ]; then isa_tests+=(zen4 unpinned); fi
if has avx2; then isa_tests+=(avx2); fi
isa_list="$(IFS=';'; echo "${isa_tests[*]}")"
echo "=== tests/run.sh: instruction-set test builds: ${isa_list:-none}"
# The kernel paths the baseline test builds run on besides the widest (attn/core/isa.hpp).
path_tests=(baseline)
avx512=0
if has avx512f && has avx512dq && has avx512bw && has avx512vl && has avx2 && has fma; then avx512=1; fi
if [ "$avx512" = 1 ]; then path_tests+=(avx2); fi
if [ "$avx512" = 1 ] && has avx512_bf16; then path_tests+=(avx512); fi
path_list="$(IFS=';'; echo "${path_tests[*]}")"
echo "=== tests/run.sh: kernel paths tested besides the widest: $path_list"
plain() {
  cmake -S "$root" -B "$root/build" \
    -DCMAKE_BUILD_TYPE=Release \
    "-DATTN_ISA_TESTS=$isa_list" \
    "-DATTN_KERNEL_PATH_TESTS=$path_list" \
    -DATTN_BUILD_TESTS=ON \
    -DATTN_BUILD_EXAMPLES=ON \
    -DATTN_BUILD_BENCHMARKS=ON \
    -DATTN_INSTALL=ON \
    -DATTN_MPI=ON \
    -DATTN_WERROR=ON &&
  cmake --build "$root/build" -j"$jobs" &&
  cmake --build "$root/build" --target docs &&
  ctest --test-dir "$root/build" --output-on-failure --no-tests=error -j"$jobs" "$@"
}
stage "build/ (Release, -Werror)" plain "$@"

# --- 2. AddressSanitizer + UndefinedBehaviorSanitizer -----------------------------------
# Any report ends the process with a non-zero status (halt_on_error, -fno-sanitize-recover).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:strict_string_checks=1:check_initialization_order=1:detect_stack_use_after_return=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# On an AVX-512 CPU the tests run the widest path (avx512 or avx512bf16); only
# test_kernel_paths, which loops over every path, runs avx2, and it keeps that path
# (tests/CMakeLists.txt). The others are built without it (ATTN_NO_AVX2_PATH): each compiles
# about 10% faster.
asan_flags=""
if [ "$avx512" = 1 ]; then asan_flags="-DATTN_NO_AVX2_PATH"; fi
sanitized() {
  cmake -S "$root" -B "$root/build-asan" \
    -DCMAKE_BUILD_TYPE=Release \
    -DATTN_SANITIZE=address,undefined \
    -DATTN_BUILD_TESTS=ON \
    -DATTN_BUILD_EXAMPLES=ON \
    -DATTN_BUILD_BENCHMARKS=OFF \
    -DATTN_INSTALL=OFF \
    -DATTN_NATIVE=OFF \
    "-DCMAKE_CXX_FLAGS=$asan_flags" &&
  cmake --build "$root/build-asan" -j"$jobs" &&
  ctest --test-dir "$root/build-asan" --output-on-failure --no-tests=error -j"$jobs" -LE '^example$' "$@"
}
if [ "${ATTN_SANITIZERS:-1}" != 0 ]; then
  stage "build-asan/ (-fsanitize=address,undefined)" sanitized "$@"
fi

# --- 3. ThreadSanitizer on the concurrency tests ----------------------------------------
# libgomp is not TSan-instrumented (TSan would report OpenMP's own synchronisation), so
# this tree is built without OpenMP; the threads are test_concurrency's own, and attn's
# pool's helpers (Concurrency.Pool* runs loops on them directly).
threads() {
  cmake -S "$root" -B "$root/build-tsan" \
    -DCMAKE_BUILD_TYPE=Release \
    -DATTN_SANITIZE=thread \
    -DATTN_OPENMP=OFF \
    -DATTN_BUILD_TESTS=ON \
    -DATTN_BUILD_EXAMPLES=OFF \
    -DATTN_BUILD_BENCHMARKS=OFF \
    -DATTN_INSTALL=OFF &&
  cmake --build "$root/build-tsan" --target test_concurrency -j"$jobs" &&
  TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}" \
    ctest --test-dir "$root/build-tsan" --output-on-failure --no-tests=error -j"$jobs" -R '^(Concurrency|EveryModule)\.'
}
if [ "${ATTN_SANITIZERS:-1}" != 0 ]; then
  stage "build-tsan/ (-fsanitize=thread, test_concurrency)" threads
fi

# --- 4. Bounded fuzzing (clang's libFuzzer) ----------------------------------------------
fuzz() {
  cmake -S "$root" -B "$root/build-fuzz" \
    -DCMAKE_CXX_COMPILER=clang++ \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DATTN_BUILD_FUZZERS=ON \
    -DATTN_FUZZ_SECONDS="$fuzz_seconds" \
    -DATTN_OPENMP=OFF \
    -DATTN_BUILD_TESTS=ON \
    -DATTN_BUILD_EXAMPLES=OFF \
    -DATTN_BUILD_BENCHMARKS=OFF \
    -DATTN_INSTALL=OFF &&
  cmake --build "$root/build-fuzz" --target fuzz_safetensors -j"$jobs" &&
  ctest --test-dir "$root/build-fuzz" --output-on-failure --no-tests=error -L '^fuzz$'
}
if [ "$fuzz_seconds" != 0 ]; then
  if command -v clang++ >/dev/null 2>&1; then
    stage "build-fuzz/ (libFuzzer, ${fuzz_seconds} s)" fuzz
  else
    echo "=== tests/run.sh: clang++ not found: fuzzing skipped (cmake/install-deps.sh tests installs it)"
  fi
fi

exit "$status"
