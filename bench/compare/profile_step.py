#!/usr/bin/python3
"""profile_step.py: where a training step spends its time, by kind of work, from a perf profile.

Runs one of bench_model's benchmarks under `perf record` (Debian: linux-perf) and sums the samples
of its functions into a few categories: the matrix products (Eigen's GEMM kernels and packing, or
the BLAS library's), the attention kernel's own loops, LayerNorm, GELU, cross-entropy, AdamW,
zeroing/copies/bias broadcasts, the benchmark's one-time setup, and the rest.

    /usr/bin/python3 bench/compare/profile_step.py                          # tiny, standard, 1 thread
    /usr/bin/python3 bench/compare/profile_step.py --bench 'train/small/standard' --threads 2
    /usr/bin/python3 bench/compare/profile_step.py --build-dir build-eigen  # the Eigen-only build

Percentages are of all samples of the process, including the benchmark's setup (model
construction); the setup row shows how much that is. Prints a Markdown table.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# First match wins, in this order.
CATEGORIES = [
    # oneDNN's kernels are generated at run time, outside any file perf can read symbols from:
    # they show as bare addresses (nothing else in these programs does).
    ("matrix products (GEMM/GEMV kernels and packing)",
     r"gebp_kernel|gemm_pack|general_matrix|gemv|sgemm|dgemm|_COOPERLAKE|_SKYLAKEX|_HASWELL|_ZEN"
     r"|blas_thread|inner_thread|exec_blas|dnnl|^0x[0-9a-f]+\b"),
    ("attention kernel (softmax, masks, tile loops)", r"attention|exp_rows|causal"),
    ("LayerNorm", r"layernorm"),
    ("GELU", r"gelu"),
    ("cross-entropy", r"cross_entropy"),
    ("AdamW and gradient clipping", r"adamw|AdamW|clip_grad|grad_norm"),
    ("benchmark setup (model construction, initialisation)",
     r"GPT<float>::GPT|init_parameters|Rng|__cos|__sin|__log|normal"),
    ("zeroing, copies, bias broadcasts, residual adds",
     r"memset|memcpy|memmove|dense_assignment|linear_forward|linear_backward|broadcast_bias"
     r"|add_column_sums|embedding|clear_page"),
    ("OpenMP runtime (fork/join, barriers, spinning)", r"gomp|GOMP|omp_"),
]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--build-dir", default=os.path.join(ROOT, "build"))
    p.add_argument("--bench", default="train/tiny/standard",
                   help="bench_model benchmark name without its suffixes (default %(default)s)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--min-time", default="3", help="seconds of benchmark (default %(default)s)")
    p.add_argument("--top", type=int, default=8, help="also list the N largest functions")
    a = p.parse_args()

    exe = os.path.join(a.build_dir, "bench", "bench_model")
    if not os.access(exe, os.X_OK):
        sys.exit(f"profile_step: {exe} not found: build it with "
                 f"cmake --build {a.build_dir} --target bench_model")
    if not shutil.which("perf"):
        sys.exit("profile_step: perf not found (Debian: apt-get install linux-perf)")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        cmd = ["perf", "record", "-q", "-o", data, "--", exe, f"--threads={a.threads}",
               f"--benchmark_filter=^{re.escape(a.bench)}(/|$)",
               f"--benchmark_min_time={a.min_time}"]
        print("+ " + " ".join(cmd), file=sys.stderr)
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            sys.exit(f"profile_step: perf record failed:\n{run.stderr[-2000:]}")
        result = [l for l in run.stdout.splitlines() if l.startswith(a.bench)]
        if not result:
            sys.exit(f"profile_step: no benchmark matched '{a.bench}' "
                     f"(see {exe} --benchmark_list_tests)")
        rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "symbol",
                              "--stdio"], capture_output=True, text=True, check=True).stdout
    totals = {name: 0.0 for name, _ in CATEGORIES}
    rest, kernel, functions = 0.0, 0.0, []
    for line in rep.splitlines():
        m = re.match(r"\s+([0-9.]+)%\s+\[(.)\]\s+(.*\S)", line)
        if not m:
            continue
        share, sym = float(m.group(1)), m.group(3)
        functions.append((share, sym))
        if m.group(2) == "k":
            kernel += share
            continue
        for name, pattern in CATEGORIES:
            if re.search(pattern, sym):
                totals[name] += share
                break
        else:
            rest += share
    print(f"`{result[0].split()[0]}`, {a.threads} thread(s), {os.path.basename(a.build_dir)}: "
          f"{' '.join(result[0].split()[1:3])} per step\n")
    print("| work | share of samples |\n|---|---|")
    for name, _ in CATEGORIES:
        print(f"| {name} | {totals[name]:.1f}% |")
    print(f"| the OS kernel (page faults: mostly the setup's first touch of memory) | {kernel:.1f}% |")
    print(f"| everything else | {rest:.1f}% |")
    print(f"\nLargest functions:\n")
    for share, sym in sorted(functions, reverse=True)[:a.top]:
        print(f"- {share:.1f}% `{sym[:110].strip()}`")


if __name__ == "__main__":
    main()
