#!/usr/bin/env bash
# Build the train and generate examples (Release, -march=native) in build/ and train the tiny
# default model on the bundled corpus (examples/data/moby_dick.txt), with a progress bar and a text
# sample at the end.
# Arguments go to the train program:
#   scripts/train.sh                 the defaults
#   scripts/train.sh --help          every option
# Run from anywhere; outputs (checkpoint, log) go to out/ in the source tree.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
die() { echo "train: error: $*" >&2; exit 1; }
run() { echo "+ $*"; "$@"; }

command -v cmake >/dev/null 2>&1 || die "cmake not found; run scripts/setup.sh first"
jobs="$(nproc 2>/dev/null || echo 2)"

run cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSTRATA_BUILD_EXAMPLES=ON -DSTRATA_NATIVE=ON -DSTRATA_USE_BLAS=ON -DSTRATA_USE_SENTENCEPIECE=ON \
  || die "configuring failed (missing packages? run scripts/setup.sh)"
run cmake --build build -j "${jobs}" --target train generate || die "building the examples failed"
[[ -x build/examples/train ]] || die "build/examples/train was not built"
echo "+ build/examples/train $*"
exec build/examples/train "$@"
