#!/usr/bin/env bash
# Build everything (Release) in build/ and run the whole test suite. Arguments go to ctest:
#   scripts/test.sh                 all tests
#   scripts/test.sh -R attention    only tests whose name matches
#   scripts/test.sh -L consumer     only the CMake consumer tests
#   scripts/test.sh --eigen [...]   the header-only default (Eigen's own products, no BLAS, no
#                                   oneDNN, no SentencePiece) in build-eigen/; without it, build/
#                                   routes the linear layers' float products to oneDNN
#                                   (STRATA_USE_DNNL=ON) and the others to OpenBLAS
#                                   (STRATA_USE_BLAS=ON) and links SentencePiece
#                                   (STRATA_USE_SENTENCEPIECE=ON), as scripts/train.sh builds them
#   scripts/test.sh --sanitize [...]  the header-only build with AddressSanitizer and
#                                   UndefinedBehaviorSanitizer (clang-14 when installed, else g++;
#                                   -O1, assertions on, every report
#                                   fails its test) and without -march=native (STRATA_NATIVE=OFF:
#                                   SSE2 code only), with SentencePiece, in build-asan/; the CMake
#                                   consumer tests are skipped there (they install and build
#                                   without sanitizers)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
die() { echo "test: error: $*" >&2; exit 1; }
run() { echo "+ $*"; "$@"; }

command -v cmake >/dev/null 2>&1 || die "cmake not found; run scripts/setup.sh first"
jobs="$(nproc 2>/dev/null || echo 2)"

build=build
blas=ON
dnnl=ON
sentencepiece=ON
benchmarks=ON
extra=(-DCMAKE_BUILD_TYPE=Release)
ctest_extra=()
case "${1:-}" in
  --eigen)
    build=build-eigen
    blas=OFF
    dnnl=OFF
    sentencepiece=OFF
    benchmarks=OFF  # the benchmarks are built (and so compile-checked) in build/
    shift ;;
  --sanitize)
    build=build-asan
    blas=OFF        # OpenBLAS and oneDNN are not instrumented: Eigen's products are
    dnnl=OFF
    benchmarks=OFF
    # clang-14 (with libomp-14-dev for OpenMP) when installed: it builds this configuration in
    # about 60% of g++'s time; g++ otherwise. Either one's sanitizers work the same way here.
    compiler=()
    if command -v clang++-14 >/dev/null 2>&1; then compiler=(-DCMAKE_CXX_COMPILER=clang++-14); fi
    extra=(-DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1"
           -DSTRATA_SANITIZE=address,undefined -DSTRATA_NATIVE=OFF -DSTRATA_INSTALL=OFF
           ${compiler[@]+"${compiler[@]}"})
    ctest_extra=(-LE consumer)
    shift ;;
esac

run cmake -S . -B "${build}" "${extra[@]}" -DSTRATA_BUILD_TESTS=ON -DSTRATA_BUILD_EXAMPLES=ON \
  -DSTRATA_USE_BLAS="${blas}" -DSTRATA_USE_DNNL="${dnnl}" -DSTRATA_USE_SENTENCEPIECE="${sentencepiece}" \
  -DSTRATA_BUILD_BENCHMARKS="${benchmarks}" || die "configuring failed (missing packages? run scripts/setup.sh)"
run cmake --build "${build}" -j "${jobs}" || die "the build failed"
run ctest --test-dir "${build}" --output-on-failure -j "${jobs}" ${ctest_extra[@]+"${ctest_extra[@]}"} "$@" \
  || die "some tests failed"
echo "test: all tests passed (${build}/, STRATA_USE_BLAS=${blas}, STRATA_USE_DNNL=${dnnl}, STRATA_USE_SENTENCEPIECE=${sentencepiece})"
