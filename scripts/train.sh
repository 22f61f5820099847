#!/usr/bin/env bash
# Build the train and generate examples (Release, -march=native) in build/ and train the tiny
# default model on the bundled corpus (examples/data/moby_dick.txt), with a progress bar and a text
# sample at the end.
# Arguments go to the train program:
#   scripts/train.sh                 the defaults
#   scripts/train.sh --help          every option
# Run from anywhere. Each run gets a folder of its own, out/runs/<date-time>/ in the source tree
# (checkpoint model.safetensors, log train_log.jsonl), and out/latest points to the newest one, so
# running this script twice keeps the first run. Give --checkpoint, --log or --resume yourself to
# choose the paths instead (train then refuses to replace an existing checkpoint unless asked).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
die() { echo "train: error: $*" >&2; exit 1; }
run() { echo "+ $*"; "$@"; }

command -v cmake >/dev/null 2>&1 || die "cmake not found; run scripts/setup.sh first"
jobs="$(nproc 2>/dev/null || echo 2)"

run cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DSTRATA_BUILD_EXAMPLES=ON -DSTRATA_NATIVE=ON -DSTRATA_USE_BLAS=ON -DSTRATA_USE_DNNL=ON -DSTRATA_USE_SENTENCEPIECE=ON \
  || die "configuring failed (missing packages? run scripts/setup.sh)"
run cmake --build build -j "${jobs}" --target train generate || die "building the examples failed"
[[ -x build/examples/train ]] || die "build/examples/train was not built"

# A fresh run folder unless the arguments choose the outputs (or only ask for help).
own_paths=0
for arg in "$@"; do
  case "$arg" in
    --checkpoint|--checkpoint=*|--log|--log=*|--resume|--resume=*|-h|--help) own_paths=1 ;;
  esac
done
if (( own_paths )); then
  echo "+ build/examples/train $*"
  exec build/examples/train "$@"
fi
stamp="$(date +%Y%m%d-%H%M%S)"
run_dir="out/runs/${stamp}"
n=1
while [[ -e "${run_dir}" ]]; do n=$((n + 1)); run_dir="out/runs/${stamp}-${n}"; done
set -- --checkpoint "${run_dir}/model.safetensors" --log "${run_dir}/train_log.jsonl" "$@"
echo "+ build/examples/train $*"
status=0
build/examples/train "$@" || status=$?
if [[ -e "${run_dir}/model.safetensors" ]]; then
  ln -sfn "runs/${run_dir#out/runs/}" out/latest
  echo "this run: ${run_dir}/ (out/latest points to it; earlier runs stay in out/runs/)"
  echo "next:     build/examples/generate --checkpoint out/latest/model.safetensors"
fi
exit "${status}"
