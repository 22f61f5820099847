#!/usr/bin/env bash
# Builds the libFuzzer harnesses (fuzz/, clang-14 with ASan + UBSan) in build-fuzz/ and runs each
# on a copy of its seed corpus (fuzz/corpus/<harness>/):
#   scripts/fuzz.sh                        every harness for 60 s
#   scripts/fuzz.sh --time 10              every harness for 10 s (CI)
#   scripts/fuzz.sh --runs 1000000         every harness for one million executions
#   scripts/fuzz.sh --runs 1000000 fuzz_plan_json     one harness
#   scripts/fuzz.sh --keep-going ...       do not stop at the first finding (libFuzzer's fork
#                                          mode); every finding is saved and counted
# Prints one line per harness (executions, seconds, findings) and fails if any harness found
# something: a crash, a sanitizer report, an uncaught exception, a leak, a timeout (10 s) or more
# than 2048 MB of memory. The input that triggered it is saved in build-fuzz/findings/<harness>/;
# reproduce with build-fuzz/fuzz/<harness> <that file>.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
die() { echo "fuzz: error: $*" >&2; exit 1; }
run() { echo "+ $*"; "$@"; }

all=(fuzz_safetensors fuzz_checkpoint_metadata fuzz_plan_json)
limit=(-max_total_time=60)
mode=()
targets=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --time) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ && "$2" -gt 0 ]] || die "--time needs seconds > 0"
            limit=(-max_total_time="$2"); shift 2 ;;
    --runs) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ && "$2" -gt 0 ]] || die "--runs needs a count > 0"
            limit=(-runs="$2"); shift 2 ;;
    --keep-going) mode=(-fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1); shift ;;
    -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    fuzz_*) [[ " ${all[*]} " == *" $1 "* ]] || die "unknown harness '$1' (have: ${all[*]})"
            targets+=("$1"); shift ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=("${all[@]}")

cxx="${CXX_FUZZ:-clang++-14}"
command -v "${cxx}" >/dev/null 2>&1 || die "${cxx} not found (Debian: clang-14 libfuzzer-14-dev)"
run cmake -S . -B build-fuzz -DCMAKE_CXX_COMPILER="${cxx}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DSTRATA_BUILD_FUZZERS=ON -DSTRATA_BUILD_TESTS=OFF -DSTRATA_BUILD_EXAMPLES=OFF \
  -DSTRATA_BUILD_BENCHMARKS=OFF -DSTRATA_INSTALL=OFF -DSTRATA_USE_OPENMP=OFF >/dev/null \
  || die "configuring build-fuzz/ failed"
run cmake --build build-fuzz -j "$(nproc 2>/dev/null || echo 2)" --target "${targets[@]}" \
  || die "building the harnesses failed"

export ASAN_OPTIONS="${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
failed=0
summary=()
for t in "${targets[@]}"; do
  work="build-fuzz/corpus/${t}"       # grows while fuzzing; the checked-in seeds stay as they are
  findings="build-fuzz/findings/${t}"
  mkdir -p "${work}" "${findings}"
  log="build-fuzz/${t}.log"
  echo "+ build-fuzz/fuzz/${t} ${limit[*]} ${mode[*]} ${work} fuzz/corpus/${t}  (log: ${log})"
  status=0
  "build-fuzz/fuzz/${t}" "${limit[@]}" ${mode[@]+"${mode[@]}"} -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="${findings}/" "${work}" "fuzz/corpus/${t}" >"${log}" 2>&1 || status=$?
  if [[ ${#mode[@]} -eq 0 ]]; then
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "${log}" | tail -1)"
    secs="$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "${log}" | tail -1)"
  else  # fork mode's progress lines: "#<runs>: cov: ... time: <s>s job: ..."
    runs="$(sed -n 's/^#\([0-9]*\): cov:.*/\1/p' "${log}" | tail -1)"
    secs="$(sed -n 's/^#[0-9]*: cov:.* time: \([0-9]*\)s .*/\1/p' "${log}" | tail -1)"
  fi
  found="$(find "${findings}" -type f | wc -l)"
  line="${t}: ${runs:-?} executions in ${secs:-?} s, findings ${found}, exit ${status}"
  echo "fuzz: ${line}"
  summary+=("${line}")
  if [[ ${status} -ne 0 || ${found} -ne 0 ]]; then
    failed=1
    tail -40 "${log}" >&2
  fi
done
printf 'fuzz: %s\n' "${summary[@]}"
[[ ${failed} -eq 0 ]] || die "a harness found a problem (inputs in build-fuzz/findings/)"
echo "fuzz: no findings"
