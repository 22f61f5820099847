#!/usr/bin/env python3
"""mpi_scaling.py: data-parallel training on one machine, 2 ranks x 1 thread (mpirun) against
1 process x 2 threads, for the tiny and small models: tokens/s, step time and the share of step time
spent waiting in the gradient reduction; plus the paper model of multi-host scaling (bytes reduced
per step against 10 and 100 Gbit/s links) with the measured step times next to it.

Needs a build with STRATA_USE_MPI=ON and the examples, e.g.
  cmake -S . -B build-mpi -DSTRATA_USE_MPI=ON -DSTRATA_USE_BLAS=ON -DSTRATA_BUILD_EXAMPLES=ON
  cmake --build build-mpi -j2 --target train
  python3 bench/compare/mpi_scaling.py --build build-mpi --out mpi_scaling.md

Runs alternate (process, ranks, process, ...) so that a change in the machine's state hits both;
each figure is the median over rounds of the median step after the first warm-up steps. Measure on
a quiet machine: the script records the load average before and after.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402

SIZES = {
    "tiny": ["--layers", "4", "--heads", "4", "--width", "128", "--context", "128", "--batch", "16"],
    "small": ["--layers", "6", "--heads", "6", "--width", "384", "--context", "256", "--batch", "8"],
}
WARMUP = 3  # steps left out of the medians (first-touch allocation, caches)


def run_train(cmd, log):
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if out.returncode != 0:
        sys.exit("mpi_scaling: failed:\n" + " ".join(cmd) + "\n" + out.stdout)
    steps = [json.loads(l) for l in open(log) if "train_loss" in l]
    ms = [s["ms"] for s in steps[WARMUP:]] or [s["ms"] for s in steps]
    params = int(re.search(r"strata train: (\d+) parameters", out.stdout).group(1))
    comm = re.search(r"communication: ([0-9.]+) s of ([0-9.]+) s step time", out.stdout)
    share = float(comm.group(1)) / float(comm.group(2)) if comm else None
    return statistics.median(ms), params, share


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build-mpi", help="build directory with examples/train")
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--steps", default="tiny=40,small=12", help="steps per run, per size")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mpiexec", default="mpiexec --oversubscribe --allow-run-as-root -n 2",
                    help="launcher with its flags and rank count")
    ap.add_argument("--out", help="also write the markdown here")
    a = ap.parse_args()
    train = os.path.join(a.build, "examples", "train")
    steps = dict(kv.split("=") for kv in a.steps.split(","))
    load_before = machine.loadavg()
    rows, model_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for size in a.sizes.split(","):
            common = SIZES[size] + ["--steps", steps[size], "--eval-interval", "1000000",
                                    "--eval-batches", "1", "--sample-tokens", "0",
                                    "--checkpoint-interval", "0", "--quiet", "--overwrite",
                                    "--checkpoint", os.path.join(tmp, "m.safetensors")]
            log = os.path.join(tmp, "log.jsonl")
            one, two, shares = [], [], []
            for _ in range(a.rounds):
                ms, params, _ = run_train([train, "--threads", "2", "--log", log] + common, log)
                one.append(ms)
                ms, _, share = run_train(a.mpiexec.split() + [train, "--threads", "1", "--log", log]
                                         + common, log)
                two.append(ms)
                shares.append(share)
            batch = int(SIZES[size][SIZES[size].index("--batch") + 1])
            T = int(SIZES[size][SIZES[size].index("--context") + 1])
            m1, m2 = statistics.median(one), statistics.median(two)
            rows.append(f"| {size} (B{batch} T{T}) | 1 process x 2 threads | {m1:.0f} | "
                        f"{batch * T / m1 * 1e3:,.0f} | | {', '.join(f'{x:.0f}' for x in one)} |")
            rows.append(f"| {size} | 2 ranks x 1 thread | {m2:.0f} | {batch * T / m2 * 1e3:,.0f} | "
                        f"{100 * statistics.median(shares):.1f}% | "
                        f"{', '.join(f'{x:.0f}' for x in two)} |")
            model_rows.append((size, params, m1, m2))
    load_after = machine.loadavg()

    out = []
    out.append(f"Machine: {machine.cpu_model()}, {os.cpu_count()} logical CPUs; commit "
               f"{machine.git_commit()}; load average {load_before} before, {load_after} after.")
    out.append("")
    out.append("| model | setup | step ms (median) | tokens/s | waiting in the reduction "
               "| step ms per round |")
    out.append("|---|---|---|---|---|---|")
    out += rows
    out.append("")
    out.append("Paper model: a ring all-reduce moves 2 (N-1)/N x 4 bytes per parameter in and out "
               "of every rank per step (N = 2: 4 bytes per parameter); at full link speed:")
    out.append("")
    out.append("| model | parameters | MB reduced per step | 10 Gbit/s | 100 Gbit/s "
               "| measured step here (1 process x 2 threads) |")
    out.append("|---|---|---|---|---|---|")
    for size, params, m1, _ in model_rows:
        mb = 4 * params / 1e6
        out.append(f"| {size} | {params:,} | {mb:.1f} (N = 2), {2 * mb:.1f} (N large) | "
                   f"{mb * 8 / 10e3 * 1e3:.1f}-{2 * mb * 8 / 10e3 * 1e3:.1f} ms | "
                   f"{mb * 8 / 100e3 * 1e3:.2f}-{2 * mb * 8 / 100e3 * 1e3:.2f} ms | {m1:.0f} ms |")
    text = "\n".join(out)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
