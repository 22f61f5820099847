#!/usr/bin/env python3
"""Cost of each attention plan relative to standard, measured side by side in one run of
build/bench/bench_model (Google Benchmark, repeated; medians).

    python3 bench/compare/plan_costs.py                      # tiny, 2 threads, 5 repetitions
    python3 bench/compare/plan_costs.py --config small --what train --repetitions 3

Prints a Markdown table: time per training step / per generated token for each plan, the ratio to
the standard plan, and the KV-cache memory of generation."""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from machine import cpu_model  # bench/compare/machine.py

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PLANS = ["standard", "skip_split", "skip_concat", "shortcut", "dense_shortcut"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "bench", "bench_model"))
    ap.add_argument("--config", default="tiny", choices=["tiny", "small"])
    ap.add_argument("--what", default="train,generate", help="comma list of train, forward, generate")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repetitions", type=int, default=5)
    ap.add_argument("--json", help="also keep Google Benchmark's JSON here")
    args = ap.parse_args()
    if not os.path.exists(args.bench):
        sys.exit("plan_costs: %s not found; build it with: cmake --build build --target bench_model"
                 % args.bench)
    what = args.what.split(",")
    pattern = "^(%s)/%s/(%s)(/|$)" % ("|".join(what), args.config, "|".join(PLANS))
    out = args.json or tempfile.mktemp(suffix=".json")
    cmd = [args.bench, "--threads=%d" % args.threads, "--benchmark_filter=" + pattern,
           "--benchmark_repetitions=%d" % args.repetitions,
           "--benchmark_enable_random_interleaving=true",
           "--benchmark_format=json", "--benchmark_out=" + out, "--benchmark_out_format=json"]
    print("+ " + " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        data = json.load(f)
    runs = {}
    cache = {}
    for b in data["benchmarks"]:
        if b.get("run_type") != "iteration":
            continue
        name = b["run_name"].split("/min_time")[0].replace("/real_time", "")
        runs.setdefault(name, []).append(b["real_time"])  # ms
        if "cache_bytes" in b:
            cache[name] = b["cache_bytes"]
    print("strata plan costs, %s config, %d threads, %d repetitions (medians), %s, %s\n"
          % (args.config, args.threads, args.repetitions, cpu_model(), time.strftime("%Y-%m-%d")))
    for w in what:
        new_tokens = {"tiny": 127, "small": 255}[args.config]  # context - 1, as bench_model
        unit = {"train": "ms / step", "forward": "ms / forward",
                "generate": "ms / %d tokens" % new_tokens}[w]
        base_name = "%s/%s/standard" % (w, args.config)
        if base_name not in runs:
            continue
        base = statistics.median(runs[base_name])
        header = "| %s | %s | ratio to standard |" % (w, unit)
        if w == "generate":
            header += " KV cache |"
        print(header)
        print("|---|---|---|" + ("---|" if w == "generate" else ""))
        for p in PLANS:
            n = "%s/%s/%s" % (w, args.config, p)
            if n not in runs:
                continue
            med = statistics.median(runs[n])
            row = "| %s | %.2f | %.3f |" % (p, med, med / base)
            if w == "generate":
                row += " %.0f KiB |" % (cache.get(n, 0) / 1024)
            print(row)
        print()


if __name__ == "__main__":
    main()
