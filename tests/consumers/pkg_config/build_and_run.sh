#!/usr/bin/env bash
# Consumer of attn through its installed pkg-config file, without CMake:
#   build_and_run.sh <install prefix> <C++ compiler> <work dir>
# Compiles tests/consumers/find_package/main.cpp with the flags `pkg-config attn` gives
# (attn's include directory, Eigen's through `Requires: eigen3`, OpenMP when attn was
# installed with it) and runs the program.
set -euo pipefail
prefix="$1" cxx="$2" work="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PKG_CONFIG_PATH="$prefix/share/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
pkg-config --exists --print-errors attn
cflags="$(pkg-config --cflags attn)" libs="$(pkg-config --libs attn)"
case "$cflags" in *"$prefix"*) ;; *) echo "pkg-config attn: cflags '$cflags' do not point into $prefix" >&2; exit 1 ;; esac
mkdir -p "$work"
# shellcheck disable=SC2086  # the flags are words
"$cxx" -std=c++17 $cflags "$here/../find_package/main.cpp" -o "$work/consumer" $libs
"$work/consumer"
echo "pkg-config consumer: built with '$cflags $libs' and ran"
