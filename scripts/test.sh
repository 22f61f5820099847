#!/usr/bin/env bash
# Build everything (Release) in build/ and run the whole test suite. Arguments go to ctest:
#   scripts/test.sh                 all tests
#   scripts/test.sh -R attention    only tests whose name matches
#   scripts/test.sh -L consumer     only the CMake consumer tests
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
die() { echo "test: error: $*" >&2; exit 1; }
run() { echo "+ $*"; "$@"; }

command -v cmake >/dev/null 2>&1 || die "cmake not found; run scripts/setup.sh first"
jobs="$(nproc 2>/dev/null || echo 2)"

run cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSTRATA_BUILD_TESTS=ON \
  || die "configuring failed (missing packages? run scripts/setup.sh)"
run cmake --build build -j "${jobs}" || die "the build failed"
run ctest --test-dir build --output-on-failure -j "${jobs}" "$@" || die "some tests failed"
echo "test: all tests passed"
