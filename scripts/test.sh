#!/usr/bin/env bash
# Build everything (Release) in build/ and run the whole test suite. Arguments go to ctest:
#   scripts/test.sh                 all tests
#   scripts/test.sh -R attention    only tests whose name matches
#   scripts/test.sh -L consumer     only the CMake consumer tests
#   scripts/test.sh --eigen [...]   the header-only default (Eigen's own products, no BLAS, no
#                                   SentencePiece) in build-eigen/; without it, build/ routes
#                                   products to OpenBLAS (STRATA_USE_BLAS=ON) and links SentencePiece
#                                   (STRATA_USE_SENTENCEPIECE=ON), as scripts/train.sh builds them
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
die() { echo "test: error: $*" >&2; exit 1; }
run() { echo "+ $*"; "$@"; }

command -v cmake >/dev/null 2>&1 || die "cmake not found; run scripts/setup.sh first"
jobs="$(nproc 2>/dev/null || echo 2)"

build=build
blas=ON
sentencepiece=ON
benchmarks=ON
if [[ "${1:-}" == --eigen ]]; then
  build=build-eigen
  blas=OFF
  sentencepiece=OFF
  benchmarks=OFF  # the benchmarks are built (and so compile-checked) in build/
  shift
fi

run cmake -S . -B "${build}" -DCMAKE_BUILD_TYPE=Release -DSTRATA_BUILD_TESTS=ON \
  -DSTRATA_USE_BLAS="${blas}" -DSTRATA_USE_SENTENCEPIECE="${sentencepiece}" \
  -DSTRATA_BUILD_BENCHMARKS="${benchmarks}" || die "configuring failed (missing packages? run scripts/setup.sh)"
run cmake --build "${build}" -j "${jobs}" || die "the build failed"
run ctest --test-dir "${build}" --output-on-failure -j "${jobs}" "$@" || die "some tests failed"
echo "test: all tests passed (${build}/, STRATA_USE_BLAS=${blas}, STRATA_USE_SENTENCEPIECE=${sentencepiece})"
