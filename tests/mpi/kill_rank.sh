#!/usr/bin/env bash
# A rank killed with SIGKILL in the middle of a data-parallel run must end the whole job within
# seconds, with a message, and the last checkpoint (written by rank 0, atomically) must still load.
#   kill_rank.sh <dir> <train> <generate> <mpiexec and its flags...>
set -uo pipefail
dir=$1 train=$2 generate=$3
shift 3
rm -rf "${dir}" && mkdir -p "${dir}"
"$@" -n 2 "${train}" --layers 2 --heads 2 --width 32 --context 32 --batch 4 --threads 1 \
  --steps 1000000 --eval-interval 1000000 --checkpoint-interval 5 --sample-tokens 0 \
  --checkpoint "${dir}/model.safetensors" --log "${dir}/log.jsonl" >"${dir}/out.txt" 2>&1 &
launcher=$!

fail() { echo "kill_rank: FAILED: $*"; cat "${dir}/out.txt"; kill -9 "${launcher}" 2>/dev/null; exit 1; }

# Wait for the first checkpoint, then find rank 1 among the launcher's children.
for _ in $(seq 600); do
  [[ -f "${dir}/model.safetensors" ]] && break
  sleep 0.1
done
[[ -f "${dir}/model.safetensors" ]] || fail "no checkpoint after 60 s"
victim=""
for pid in $(pgrep -P "${launcher}"); do
  if tr '\0' '\n' <"/proc/${pid}/environ" 2>/dev/null | grep -qx 'OMPI_COMM_WORLD_RANK=1'; then
    victim=${pid}
  fi
done
[[ -n "${victim}" ]] || fail "rank 1 is not a child of the launcher (pid ${launcher})"
echo "kill_rank: kill -9 rank 1 (pid ${victim}) after $(wc -l <"${dir}/log.jsonl") logged steps"
start=$(date +%s%N)
kill -9 "${victim}"
for _ in $(seq 300); do
  kill -0 "${launcher}" 2>/dev/null || break
  sleep 0.1
done
kill -0 "${launcher}" 2>/dev/null && fail "the job still runs 30 s after rank 1 was killed"
wait "${launcher}"
status=$?
took_ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "kill_rank: the launcher ended ${took_ms} ms after the kill, exit status ${status}"
cat "${dir}/out.txt"
[[ ${status} -ne 0 ]] || fail "the launcher reported success"
grep -q "signal 9" "${dir}/out.txt" || fail "no message naming the killed rank's signal"
pgrep -f "${dir}/model.safetensors" >/dev/null && fail "a rank outlived the launcher"
"${generate}" --checkpoint "${dir}/model.safetensors" --prompt "Call me " --tokens 10 ||
  fail "the last checkpoint does not load"
echo "kill_rank: ok"
