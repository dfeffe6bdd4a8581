#!/usr/bin/env bash
# Install the Debian packages attn needs, and only the missing ones.
#
#   cmake/install-deps.sh [tests|examples|bench|all]     (default: all)
#
# Uses apt-get (via sudo when not root and sudo exists). Prints a single line
# when everything is already installed.
set -euo pipefail

purpose="${1:-all}"

base=(cmake g++ make libeigen3-dev)
case "$purpose" in
  tests)    extra=(libgtest-dev libgmock-dev nlohmann-json3-dev libstb-dev libbenchmark-dev python3-torch python3-numpy doxygen pkg-config
                   libopenmpi-dev openmpi-bin) ;;
  examples) extra=(nlohmann-json3-dev libstb-dev) ;;
  bench)    extra=(libbenchmark-dev python3-torch python3-numpy python3-matplotlib libopenblas0-pthread
                   python3-onnx) ;;
  all)      extra=(libgtest-dev libgmock-dev nlohmann-json3-dev libstb-dev libbenchmark-dev doxygen pkg-config
                   libopenmpi-dev openmpi-bin) ;;
  -h|--help)
    sed -n '2,7p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 0 ;;
  *)
    echo "install-deps: unknown purpose '$purpose' (expected tests, examples, bench or all)" >&2
    exit 2 ;;
esac
# tests/run.sh's fuzzing stage: clang with its libFuzzer and sanitizer runtimes.
case "$purpose" in
  tests|all) extra+=(clang libclang-rt-14-dev) ;;
esac
packages=("${base[@]}" "${extra[@]}")

if ! command -v dpkg >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: not a Debian/Ubuntu system (no dpkg/apt-get); make sure these are installed: ${packages[*]}" >&2
  exit 0
fi

is_installed() {
  # dpkg -s also succeeds for removed packages whose config files remain.
  dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed$'
}

missing=()
for p in "${packages[@]}"; do
  is_installed "$p" || missing+=("$p")
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all packages for '$purpose' are installed"
  exit 0
fi

echo "install-deps: installing missing packages for '$purpose': ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "install-deps: not root and sudo is not available; as root run:" >&2
  echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi

"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y --no-install-recommends "${missing[@]}"
