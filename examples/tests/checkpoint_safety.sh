#!/usr/bin/env bash
# End-to-end checks of what train promises about checkpoints (run by ctest):
#   checkpoint_safety.sh clobber TRAIN DIR   a finished checkpoint is never replaced by accident
#   checkpoint_safety.sh signals TRAIN DIR   SIGINT/SIGTERM save and exit 130/143, the saved run
#                                            resumes bit-exactly; the log is locked; a second
#                                            signal exits at once
#   checkpoint_safety.sh data TRAIN DIR DATA data that is not UTF-8 gets a warning and still trains
#   checkpoint_safety.sh study TRAIN DIR     scripts/study.py does not replace kept checkpoints
#   checkpoint_safety.sh demo TRAIN DIR      scripts/train.sh twice in a row keeps both runs
# Every failure prints what was expected and what happened, and exits 1.
set -uo pipefail

mode=$1 train=$2 dir=$3
scripts=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../scripts" && pwd)
rm -rf "$dir" && mkdir -p "$dir" || exit 1
cd "$dir" || exit 1

fail() { echo "FAIL: $*" >&2; exit 1; }
tiny=(--layers 2 --heads 2 --width 32 --context 32 --batch 4 --eval-interval 5 --eval-batches 2
      --sample-tokens 0 --threads 1 --quiet)
# The step count a checkpoint's strata.train metadata records (it is JSON text inside the header).
saved_step() { grep -ao '\\"step\\":[0-9]*' "$1" | head -1 | grep -o '[0-9]*$'; }
# Runs train, keeping its output in $out and its exit code in $rc.
run_train() { out=$("$train" "$@" 2>&1); rc=$?; }
expect() {  # expect CODE REGEX WHAT (CODE may be alternatives: 130|143)
  [[ $rc =~ ^($1)$ ]] || fail "$3: exit code $rc, expected $1; output:"$'\n'"$out"
  [[ $out =~ $2 ]] || fail "$3: output does not match '$2':"$'\n'"$out"
}

case $mode in
clobber)
  run_train "${tiny[@]}" --steps 6 --checkpoint a.safetensors --log a.jsonl
  expect 0 "done: 6 steps" "a first run"
  sum=$(sha256sum < a.safetensors)

  start=$(date +%s.%N)
  run_train "${tiny[@]}" --steps 6 --checkpoint a.safetensors --log a2.jsonl
  elapsed=$(echo "$(date +%s.%N) - $start" | bc)
  expect 1 "train: error: --checkpoint a.safetensors already exists, and this fresh run would replace it at its first save\. Continue that run with --resume a.safetensors, give this run another --checkpoint, or replace it with --overwrite \(the old file stays until the first new save succeeds\)" \
    "a fresh run over a finished checkpoint"
  [[ $(sha256sum < a.safetensors) == "$sum" ]] || fail "the refused run changed a.safetensors"
  # The refusal comes before the model is built (~0.05 s on an idle machine). That nothing ran is
  # checked by the unchanged checkpoint and the missing log; the time bound catches a refusal that
  # waits for something, with room for a loaded CI machine and the sanitizer build.
  (( $(echo "$elapsed < 5.0" | bc) )) || fail "the refusal took ${elapsed}s, expected well under 5 s"
  [[ ! -e a2.jsonl ]] || fail "the refused run created its log"

  run_train "${tiny[@]}" --steps 4 --checkpoint a.safetensors --log a.jsonl --overwrite
  expect 0 "done: 4 steps" "--overwrite"
  [[ $(saved_step a.safetensors) == 4 ]] || fail "--overwrite: a.safetensors is at step $(saved_step a.safetensors), expected 4"

  run_train --resume a.safetensors --steps 9 --log a.jsonl
  expect 0 "resumed from a.safetensors at step 4" "--resume alone"
  [[ $(saved_step a.safetensors) == 9 ]] || fail "--resume a.safetensors did not write back: step $(saved_step a.safetensors), expected 9"
  [[ ! -e out/model.safetensors ]] || fail "--resume alone wrote out/model.safetensors"

  run_train "${tiny[@]}" --steps 3 --checkpoint b.safetensors --log b.jsonl
  expect 0 "done: 3 steps" "a second run"
  sum_b=$(sha256sum < b.safetensors)
  run_train --resume a.safetensors --steps 12 --checkpoint b.safetensors --log a.jsonl
  expect 1 "train: error: --checkpoint b.safetensors already exists and is not the checkpoint being resumed \(a.safetensors\); give another --checkpoint, leave it out to write back to a.safetensors, or replace it with --overwrite" \
    "--resume onto another existing checkpoint"
  [[ $(sha256sum < b.safetensors) == "$sum_b" ]] || fail "the refused resume changed b.safetensors"
  sum=$(sha256sum < a.safetensors)
  run_train --resume a.safetensors --steps 12 --checkpoint c.safetensors --log c.jsonl
  expect 0 "resumed from a.safetensors at step 9" "--resume into a new file"
  [[ $(saved_step c.safetensors) == 12 && $(sha256sum < a.safetensors) == "$sum" ]] \
    || fail "--resume a --checkpoint c: c at step $(saved_step c.safetensors) (expected 12), a changed or not"

  # Output paths are checked before the first step.
  mkdir -p somedir && echo x > afile
  run_train "${tiny[@]}" --steps 3 --checkpoint somedir --log d.jsonl
  expect 1 "train: error: --checkpoint somedir: is a directory; expected a file path such as somedir/model.safetensors" "--checkpoint a directory"
  run_train "${tiny[@]}" --steps 3 --checkpoint afile/model.safetensors --log d.jsonl
  expect 1 "train: error: --checkpoint afile/model.safetensors: 'afile' is a file, not a directory" "--checkpoint under a file"
  run_train "${tiny[@]}" --steps 3 --checkpoint d.safetensors --log somedir
  expect 1 "train: error: --log somedir: is a directory; expected a file path such as somedir/train_log.jsonl" "--log a directory"
  if [[ $(id -u) == 0 ]]; then ro=/sys; else mkdir -p ro && chmod 555 ro && ro=$PWD/ro; fi
  run_train "${tiny[@]}" --steps 3 --checkpoint "$ro/model.safetensors" --log d.jsonl
  expect 1 "train: error: --checkpoint $ro/model.safetensors: cannot create files in '$ro': " "--checkpoint in a read-only place"
  run_train "${tiny[@]}" --steps 3 --checkpoint new/sub/d.safetensors --log new/d.jsonl
  expect 0 "note: created the directory 'new/sub' for --checkpoint" "a missing parent directory"

  # A bad model setting is reported before any file or folder is made.
  run_train --width 30 --heads 4 --steps 3 --checkpoint cfg/x.safetensors --log cfg/x.jsonl
  expect 1 "train: error: ModelConfig: n_embd 30 is not divisible by n_head 4" "an invalid model setting"
  [[ ! -e cfg ]] || fail "the invalid run created its output folder"

  # A training checkpoint saved through the library without trainer options cannot be resumed by
  # train, and the message says why (its options are emptied here by rewriting the header).
  python3 - a.safetensors api.safetensors <<'PY' || fail "could not rewrite the checkpoint header"
import json, struct, sys
data = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
state = json.loads(header["__metadata__"]["strata.train"])
state["options"] = {}
header["__metadata__"]["strata.train"] = json.dumps(state)
text = json.dumps(header).encode()
text += b" " * ((8 - len(text) % 8) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(text)) + text + data[8 + n:])
PY
  run_train --resume api.safetensors --log api.jsonl
  expect 1 "train: error: --resume api.safetensors: the checkpoint holds no trainer options \(it was not saved by train\); start a fresh run from it with the library instead" "--resume of a checkpoint without trainer options"

  # Unsigned options reject negative numbers instead of wrapping around.
  run_train "${tiny[@]}" --seed -5
  expect 105 "--seed: -5 is not an unsigned integer \(0 to 18446744073709551615\)" "--seed -5"
  run_train "${tiny[@]}" --seed 18446744073709551616
  expect 105 "--seed: 18446744073709551616 is not an unsigned integer" "--seed 2^64"
  run_train "${tiny[@]}" --steps 99999999999999999999
  expect 105 "--steps: 99999999999999999999 is out of range \(at most 9223372036854775807\)" "--steps 1e20"
  ;;

signals)
  # Run length: 600 steps with a checkpoint every 100 (CHECKPOINT_SAFETY_STEPS shortens it for the
  # sanitized build, whose steps are ~10x slower); the signals come a quarter and a sixth in.
  steps=${CHECKPOINT_SAFETY_STEPS:-600}
  every=$((steps / 6)) first=$((steps / 4))
  long=(--layers 2 --heads 2 --width 64 --context 64 --batch 8 --eval-interval "$every"
        --eval-batches 2 --sample-tokens 0 --threads 1 --quiet --steps "$steps"
        --checkpoint-interval "$every")
  wait_for_steps() {  # wait_for_steps LOG N PID: until the log has N step lines (or the run ends)
    local n
    for _ in $(seq 1200); do
      n=$(grep -c train_loss "$1" 2>/dev/null)
      (( ${n:-0} >= $2 )) && return 0
      kill -0 "$3" 2>/dev/null || return 1
      sleep 0.1
    done
    return 1
  }
  # The uninterrupted reference.
  run_train "${long[@]}" --checkpoint ref.safetensors --log ref.jsonl
  expect 0 "done: $steps steps" "the reference run"

  # SIGINT a few hundred steps in: exit 130 with a checkpoint; meanwhile a second train on the
  # same log is refused.
  "$train" "${long[@]}" --checkpoint run.safetensors --log run.jsonl > int.txt 2>&1 &
  pid=$!
  wait_for_steps run.jsonl $first $pid || fail "the run ended before $first steps: $(cat int.txt)"
  run_train "${tiny[@]}" --steps 3 --checkpoint other.safetensors --log run.jsonl
  expect 1 "train: error: --log run.jsonl: in use by another running train \(it holds the file's lock\); give this run another --log" "a second train on a log in use"
  kill -INT $pid
  wait $pid; rc=$? out=$(cat int.txt)
  expect 130 "interrupted at step [0-9]+; saved run.safetensors \(continue with --resume run.safetensors\)" "SIGINT"
  step1=$(saved_step run.safetensors)

  # SIGTERM during the resumed run: exit 143.
  # (the thread count is not part of a run's settings; resume with the same one to be bit-exact)
  "$train" --resume run.safetensors --log run.jsonl --quiet --threads 1 > term.txt 2>&1 &
  pid=$!
  wait_for_steps run.jsonl $((step1 + every)) $pid || fail "the resumed run ended early: $(cat term.txt)"
  kill -TERM $pid
  wait $pid; rc=$? out=$(cat term.txt)
  expect 143 "resumed from run.safetensors at step $step1.*interrupted at step [0-9]+; saved run.safetensors" "SIGTERM"

  run_train --resume run.safetensors --log run.jsonl --quiet --threads 1
  expect 0 "done: [0-9]+ steps" "resuming to the end"
  cmp -s run.safetensors ref.safetensors \
    || fail "the twice-interrupted run's checkpoint differs from the uninterrupted one's"
  strip() { sed -E 's/"ms":[^,]*,//; s/"tokens_per_s":[^,]*,//' "$1"; }
  diff <(strip ref.jsonl) <(strip run.jsonl) > /dev/null \
    || fail "the interrupted run's log (losses) differs from the uninterrupted one's"

  # Two signals in a row: the second exits at once; the checkpoint on disk stays loadable. (Two
  # different signals, because two pending SIGINTs merge into one before the process runs; the
  # exit code is 128 + the signal handled second.)
  "$train" "${long[@]}" --checkpoint two.safetensors --log two.jsonl > two.txt 2>&1 &
  pid=$!
  wait_for_steps two.jsonl $first $pid || fail "the run ended before $first steps: $(cat two.txt)"
  kill -INT $pid; kill -TERM $pid
  wait $pid; rc=$? out=$(cat two.txt)
  expect "130|143" "second signal: exiting at once without saving; the last checkpoint written is unchanged" "a second signal"
  saved=$(saved_step two.safetensors)
  run_train --resume two.safetensors --steps $((saved + 1)) --log two.jsonl --quiet
  expect 0 "resumed from two.safetensors at step ${saved}([^0-9]|$)" "resuming after a second signal"
  (( saved > 0 && saved % every == 0 )) \
    || fail "a second signal: the checkpoint on disk is at step $saved, expected a periodic save (a multiple of $every)"
  ;;

data)
  # Text with one invalid byte (0xFF) at offset 1000 of otherwise ASCII text.
  { head -c 1000 "$4"; printf '\xff'; tail -c +1002 "$4" | head -c 20000; } > mixed.txt
  run_train "${tiny[@]}" --steps 2 --data mixed.txt --checkpoint m.safetensors --log m.jsonl
  expect 0 "warning: --data mixed.txt is not valid UTF-8: the first invalid byte is 0xFF at offset 1000\. Training proceeds on its bytes .*done: 2 steps" "data with an invalid byte"
  run_train "${tiny[@]}" --steps 2 --data . --checkpoint m2.safetensors --log m2.jsonl
  expect 1 "train: error: --data \.: is a directory; expected a file" "--data a directory"
  ;;
study)
  # The study runner follows the same rule: a kept checkpoint of a run still to do is not replaced
  # (checked before building or training anything).
  study=$scripts/study.py
  mkdir -p study/models && echo trained > study/models/shortcut_T128_B16_s1.safetensors
  out=$(python3 "$study" --quick --out study --build-dir nobuild 2>&1); rc=$?
  expect 1 "study: error: .*study/models/shortcut_T128_B16_s1.safetensors already exist\(s\) and would be replaced by runs still to do; move them away, choose another --models-dir, or pass --overwrite to replace them" "the study over a kept checkpoint"
  [[ $(cat study/models/shortcut_T128_B16_s1.safetensors) == trained ]] || fail "the study changed the kept checkpoint"
  [[ ! -e nobuild ]] || fail "the study built before refusing"
  ;;
demo)
  # scripts/train.sh run twice in a row: two run folders, out/latest at the second, the first kept.
  # (A copy of the script in a scratch tree whose build/ holds this build's train, and a cmake that
  # does nothing: the script's own configure and build steps are not what is tested here.)
  mkdir -p tree/scripts tree/build/examples fakebin
  cp "$scripts/train.sh" tree/scripts/
  ln -s "$train" tree/build/examples/train
  printf '#!/bin/sh\nexit 0\n' > fakebin/cmake && chmod +x fakebin/cmake
  quick=(--steps 3 --layers 1 --heads 2 --width 32 --context 32 --batch 2 --eval-interval 3
         --eval-batches 1 --sample-tokens 5 --threads 1 --quiet)
  out=$(PATH="$PWD/fakebin:$PATH" bash tree/scripts/train.sh "${quick[@]}" 2>&1); rc=$?
  expect 0 "this run: out/runs/[0-9-]+/ \(out/latest points to it; earlier runs stay in out/runs/\)" "train.sh, first run"
  first=$(readlink tree/out/latest)
  out=$(PATH="$PWD/fakebin:$PATH" bash tree/scripts/train.sh "${quick[@]}" 2>&1); rc=$?
  expect 0 "this run: out/runs/[0-9-]+/ \(out/latest points to it" "train.sh, second run"
  second=$(readlink tree/out/latest)
  [[ $first != "$second" && -s tree/out/$first/model.safetensors && -s tree/out/$second/model.safetensors ]] \
    || fail "train.sh twice: expected two run folders with a checkpoint each, got '$first' and '$second'"
  ;;
*) fail "unknown mode $mode" ;;
esac
echo "ok: $mode"
