#!/usr/bin/env bash
# A/B benchmark of two revisions of strata on this machine, in one sitting: builds a Google
# Benchmark program of each revision (a temporary git worktree each, Release, -march=native, the
# chosen product back end), then runs them alternately, round after round, and prints the median
# time of every benchmark and the ratio B/A.
#
#   bench/compare/ab_bench.sh [options] REV_A REV_B
#     --program bench_kernels|bench_model   (default bench_kernels)
#     --filter REGEX                        --benchmark_filter (default '^linear_(fwd|bwd)/')
#     --threads 1,2                         thread counts (default 1,2)
#     --rounds N                            alternations (default 5)
#     --blas ON|OFF                         STRATA_USE_BLAS of both builds (default OFF)
#     --dnnl ON|OFF                         STRATA_USE_DNNL of both builds (default OFF; the
#                                           scripts' build/ has both ON)
#     --min-time SECONDS                    --benchmark_min_time (default 0.5)
#
# Example (the header-only build's products before and after a change):
#   bench/compare/ab_bench.sh HEAD~1 HEAD
# Timings are only comparable within one run on an otherwise idle machine; the script prints the
# CPU model and the load average next to the table.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
die() { echo "ab_bench: error: $*" >&2; exit 1; }

program=bench_kernels
filter='^linear_(fwd|bwd)/'
threads=1,2
rounds=5
blas=OFF
dnnl=OFF
min_time=0.5
revs=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --program) program="$2"; shift 2 ;;
    --filter) filter="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --blas) blas="$2"; shift 2 ;;
    --dnnl) dnnl="$2"; shift 2 ;;
    --min-time) min_time="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option '$1' (try --help)" ;;
    *) revs+=("$1"); shift ;;
  esac
done
[[ ${#revs[@]} -eq 2 ]] || die "expected two revisions, found ${#revs[@]} (try --help)"
[[ "${program}" == bench_kernels || "${program}" == bench_model ]] \
  || die "--program must be bench_kernels or bench_model, found '${program}'"
[[ "${rounds}" =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer, found '${rounds}'"

work="$(mktemp -d)"
cleanup() {
  for side in a b; do
    git -C "${ROOT}" worktree remove --force "${work}/${side}" >/dev/null 2>&1 || true
  done
  rm -rf "${work}"
}
trap cleanup EXIT

for i in 0 1; do
  side=$([[ $i == 0 ]] && echo a || echo b)
  rev="${revs[$i]}"
  git -C "${ROOT}" rev-parse --verify --quiet "${rev}^{commit}" >/dev/null \
    || die "'${rev}' is not a revision of this repository"
  echo "ab_bench: building ${program} of ${rev} ($(git -C "${ROOT}" rev-parse --short "${rev}"))"
  git -C "${ROOT}" worktree add --detach --quiet "${work}/${side}" "${rev}"
  cmake -S "${work}/${side}" -B "${work}/${side}/build" -DCMAKE_BUILD_TYPE=Release \
    -DSTRATA_BUILD_BENCHMARKS=ON -DSTRATA_BUILD_TESTS=OFF -DSTRATA_BUILD_EXAMPLES=OFF \
    -DSTRATA_NATIVE=ON -DSTRATA_USE_BLAS="${blas}" -DSTRATA_USE_DNNL="${dnnl}" >/dev/null || die "configuring ${rev} failed"
  cmake --build "${work}/${side}/build" -j "$(nproc)" --target "${program}" >/dev/null \
    || die "building ${program} of ${rev} failed"
done

echo "ab_bench: $(lscpu | sed -n 's/^Model name: *//p'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
IFS=, read -r -a thread_list <<<"${threads}"
for ((r = 1; r <= rounds; ++r)); do
  for side in a b; do
    for t in "${thread_list[@]}"; do
      "${work}/${side}/build/bench/${program}" --threads="${t}" --benchmark_filter="${filter}" \
        --benchmark_min_time="${min_time}" --benchmark_format=csv 2>/dev/null \
        | awk -F, -v s="${side}" -v t="${t}" 'NR > 1 { gsub(/"/, "", $1); print s, t, $1, $3 }'
    done
  done
done >"${work}/times.txt"

python3 - "${work}/times.txt" "${revs[0]}" "${revs[1]}" <<'EOF'
import collections, statistics, sys
times = collections.defaultdict(list)
for line in open(sys.argv[1]):
    side, threads, name, real = line.split()
    times[(name, threads, side)].append(float(real))
print(f"| benchmark | threads | A = {sys.argv[2]} | B = {sys.argv[3]} | B/A |")
print("|---|---|---|---|---|")
for name, threads in sorted({(n, t) for n, t, _ in times}):
    a = statistics.median(times[(name, threads, "a")])
    b = statistics.median(times[(name, threads, "b")])
    print(f"| {name} | {threads} | {a:.1f} | {b:.1f} | {b / a:.3f} |")
EOF
echo "ab_bench: medians of ${rounds} rounds (time unit as the program reports); load average now $(cut -d' ' -f1-3 /proc/loadavg)"
