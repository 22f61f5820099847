#!/usr/bin/env bash
# strata's training step against the PyTorch reference of ../shared/perf (peer.sh: PyTorch with
# OpenBLAS, tuned), in one sitting, alternating the two so that drifts of a noisy machine hit both.
#
#   bench/compare/speed_vs_peer.sh [--config tiny] [--threads "1 2"] [--rounds 3] [--peer PATH/peer.sh]
#
# Prints the median ms/step and tokens/s of each, and the ratio strata/PyTorch in tokens/s.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
config=tiny; threads="1 2"; rounds=3; peer="${ROOT}/../shared/perf/peer.sh"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --rounds) rounds="$2"; shift 2 ;;
    --peer) peer="$2"; shift 2 ;;
    *) echo "speed_vs_peer: unknown argument $1" >&2; exit 2 ;;
  esac
done
bench="${ROOT}/build/bench/bench_model"
[[ -x "${bench}" ]] || { echo "speed_vs_peer: build ${bench} first (cmake --build build --target bench_model)" >&2; exit 1; }
[[ -f "${peer}" ]] || { echo "speed_vs_peer: no PyTorch reference at ${peer} (pass --peer)" >&2; exit 1; }
bash "${peer}" setup >/dev/null
work="$(mktemp -d)"; trap 'rm -rf "${work}"' EXIT
for t in ${threads}; do
  for r in $(seq "${rounds}"); do
    "${bench}" --threads="${t}" --benchmark_filter="^train/${config}/standard(/|\$)" \
      --benchmark_format=json --benchmark_out="${work}/strata_${t}_${r}.json" >/dev/null
    bash "${peer}" run --what train --config "${config}" --variant standard --threads "${t}" \
      --json "${work}/peer_${t}.jsonl" >/dev/null
  done
done
/usr/bin/python3 - "${work}" "${config}" "${threads}" <<'PY'
import glob, json, os, statistics, sys, time
work, config, threads = sys.argv[1], sys.argv[2], sys.argv[3].split()
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print("training step, %s config, %s, %s (medians of rounds)\n" % (config, cpu, time.strftime("%Y-%m-%d")))
print("| threads | strata ms/step | PyTorch ms/step | strata tokens/s | PyTorch tokens/s | ratio |")
print("|---|---|---|---|---|---|")
for t in threads:
    s = [b["real_time"] for f in glob.glob(os.path.join(work, "strata_%s_*.json" % t))
         for b in json.load(open(f))["benchmarks"]]
    p = [json.loads(l) for l in open(os.path.join(work, "peer_%s.jsonl" % t))]
    tokens = p[0]["tokens_per_step"]
    sm, pm = statistics.median(s), statistics.median(r["ms_median"] for r in p)
    print("| %s | %.1f | %.1f | %.0f | %.0f | %.2fx |" % (t, sm, pm, tokens / sm * 1e3, tokens / pm * 1e3, pm / sm))
PY
