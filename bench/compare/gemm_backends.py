#!/usr/bin/env python3
"""gemm_backends.py: product libraries on strata's exact training-step shapes, side by side.

Builds bench/compare/gemm_backends.cpp once per library that is installed (OpenBLAS, BLIS, oneDNN;
Eigen always), runs the programs alternately for --rounds rounds at 1 and 2 threads, and prints a
Markdown table: GFLOP/s of every product of a training step (each linear layer's forward, dX and
dW) of the tiny and small models, and the products' total time per training step for each library
with its share of the FMA ceiling measured on the spot (build/bench/strata_fma_ceiling, or the
one-file program compiled into --build-dir, as compare.py does).

    python3 bench/compare/gemm_backends.py                        # 3 rounds, 1 and 2 threads
    python3 bench/compare/gemm_backends.py --rounds 1 --threads 2 --out gemm_backends.md

Debian packages: libopenblas-openmp-dev, libblis-dev (with libblis-openmp-dev), libdnnl-dev.
OpenBLAS runs with OPENBLAS_CORETYPE set to the widest core the CPU's flags allow (SkylakeX with
AVX-512, Haswell with AVX2; compare.py's choice), on its own command only. LIBXSMM (libxsmm-dev) is
not a column: its sgemm hands products above its small-matrix limit (M N K > 64^3, every product
here) to the BLAS it is linked with, so it would measure that BLAS again; its JIT kernels would
need strata to tile the products itself.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

from compare import (AVX2_ONLY, blas_core_for_cpu, fma_program,  # bench/compare/compare.py
                     measure_ceiling)
from machine import cpu_model, git_commit, loadavg  # bench/compare/machine.py

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SRC = os.path.join(HERE, "gemm_backends.cpp")
LAYERS = {"tiny": 4, "small": 6}  # blocks per model; the head (tied embedding) once


def die(msg):
    sys.exit("gemm_backends: error: " + msg)


def libraries():
    """(name, define, extra flags) of every library whose headers and library are installed."""
    libs = [("eigen", "GEMM_EIGEN", ["-I/usr/include/eigen3"])]
    ob = "/usr/lib/x86_64-linux-gnu/openblas-openmp"
    if os.path.exists(os.path.join(ob, "libopenblas.so")) or os.path.exists(
            os.path.join(ob, "libblas.so")):
        libs.append(("openblas", "GEMM_OPENBLAS",
                     ["-I/usr/include/x86_64-linux-gnu/openblas-openmp", "-L" + ob,
                      "-Wl,-rpath," + ob, "-lopenblas"]))
    blis = "/usr/lib/x86_64-linux-gnu/blis-openmp"
    if os.path.exists(os.path.join(blis, "libblis.so")):
        libs.append(("blis", "GEMM_BLIS", ["-I/usr/include/x86_64-linux-gnu/blis-openmp",
                                           "-L" + blis, "-Wl,-rpath," + blis, "-lblis"]))
    if os.path.exists("/usr/include/oneapi/dnnl/dnnl.h"):
        libs.append(("onednn", "GEMM_DNNL", ["-ldnnl"]))
    return libs


def build(libs, outdir, isa):
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx:
        die("no C++ compiler (apt-get install g++)")
    os.makedirs(outdir, exist_ok=True)
    exes = {}
    for name, define, flags in libs:
        exe = os.path.join(outdir, "gemm_" + name + ("_avx2" if isa == "avx2" else ""))
        march = "-march=haswell" if isa == "avx2" else "-march=native"
        cmd = [cxx, "-std=c++17", "-O3", march, "-DNDEBUG", "-fopenmp", "-D" + define,
               SRC, "-o", exe] + flags
        print("+ " + " ".join(cmd), file=sys.stderr)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"gemm_backends: {name} does not build here, left out:\n{r.stderr[-2000:]}",
                  file=sys.stderr)
            continue
        exes[name] = exe
    return exes


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="comma list of thread counts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds per timed batch")
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "out", "gemm_backends"))
    ap.add_argument("--isa", choices=["native", "avx2"], default="native",
                    help="avx2: every library held to AVX2 + FMA, as on an AVX2-only CPU "
                         "(Eigen built with -march=haswell, OpenBLAS Haswell, "
                         "ONEDNN_MAX_CPU_ISA=AVX2), against the AVX2 FMA ceiling; compare.py "
                         "--isa avx2's settings. BLIS is not held (Debian's 0.9 has no portable "
                         "switch; on the Xeon of docs/results it runs its haswell kernels "
                         "anyway: bli_arch_query_id)")
    ap.add_argument("--out", help="also write the Markdown here")
    a = ap.parse_args()
    threads = [int(t) for t in a.threads.split(",")]
    if any(t < 1 for t in threads):
        die(f"--threads {a.threads}: expected counts >= 1")
    exes = build(libraries(), a.build_dir, a.isa)
    if not exes:
        die("nothing built")
    core = blas_core_for_cpu(a.isa)
    load_before = loadavg()
    fma = fma_program(os.path.join(ROOT, "build"), a.build_dir)
    ceil = measure_ceiling(fma, threads, a.isa)["gflops"]
    t0 = time.time()
    runs = {}  # (lib, threads, model, layer, op) -> [gflops]
    ms = {}
    shapes = {}  # (model, layer, op) -> (M, N, K), as the program reports them
    for rnd in range(a.rounds):
        for t in threads:
            for lib, exe in exes.items():
                env = dict(os.environ)
                if lib == "openblas" and core:
                    env["OPENBLAS_CORETYPE"] = core
                if a.isa == "avx2":
                    env.update(AVX2_ONLY)
                out = subprocess.run([exe, "--threads", str(t), "--min-time", str(a.min_time)],
                                     capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    die(f"{exe} failed:\n{out.stderr}")
                for line in out.stdout.splitlines():
                    r = json.loads(line)
                    key = (lib, t, r["model"], r["layer"], r["op"])
                    runs.setdefault(key, []).append(r["gflops"])
                    ms.setdefault(key, []).append(r["ms"])
                    shapes[key[2:]] = (r["M"], r["N"], r["K"])
                print(f"gemm_backends: round {rnd + 1}/{a.rounds}, {t} thread(s), {lib} done",
                      file=sys.stderr)
    libs = list(exes)
    lines = [f"Products of a training step on strata's shapes, {cpu_model()}, "
             f"{time.strftime('%Y-%m-%d %H:%M')}, commit {git_commit()}",
             "",
             ("- **AVX2-only emulation** (--isa avx2): every library held to AVX2 + FMA on "
              "this CPU; the ceiling is the AVX2 FMA ceiling" if a.isa == "avx2" else
              "- every library with the kernels it chooses for this CPU (OpenBLAS: the core "
              "below)"),
             f"- FMA ceiling (fp32, {'AVX2' if a.isa == 'avx2' else 'widest ISA'}, measured "
             f"on the spot): "
             + ", ".join(f"{v:.0f} GFLOP/s on {k} thread(s)" for k, v in sorted(ceil.items())),
             f"- OpenBLAS core: {core or 'as found'} (set for its own command only); "
             f"{a.rounds} round(s), libraries alternating, medians over rounds; each figure is "
             f"the median of 5 timed batches of >= {a.min_time} s",
             f"- load average {load_before} before, {loadavg()} after; "
             f"{(time.time() - t0) / 60:.1f} min",
             "- rows: a linear layer Y[N, out] = X[N, in] W^T with N = 2048 rows (B x T); fwd = "
             "X W^T, dX = dY W, dW = dY^T X",
             ""]
    for model in ("tiny", "small"):
        for t in threads:
            lines.append(f"**{model}, {t} thread(s)**, GFLOP/s:")
            lines.append("")
            lines.append("| layer | product | M x N x K | " + " | ".join(libs) + " |")
            lines.append("|---|---|---|" + "---|" * len(libs))
            layers = []
            for key in runs:
                if key[0] == libs[0] and key[1] == t and key[2] == model and key[3:] not in layers:
                    layers.append(key[3:])
            totals = {lib: 0.0 for lib in libs}
            flops = 0.0
            for layer, op in layers:
                count = 1 if layer == "head" else LAYERS[model]
                cells = []
                for lib in libs:
                    g = statistics.median(runs[(lib, t, model, layer, op)])
                    totals[lib] += count * statistics.median(ms[(lib, t, model, layer, op)])
                    cells.append(f"{g:.0f}")
                best = max(range(len(libs)), key=lambda i: float(cells[i]))
                cells[best] = f"**{cells[best]}**"
                M, N, K = shapes[(model, layer, op)]
                flops += count * 2.0 * M * N * K
                lines.append(f"| {layer} | {op} | {M} x {N} x {K} | " + " | ".join(cells) + " |")
            row = "| all products of a step | | ms (GFLOP/s, % of ceiling) | "
            cells = []
            for lib in libs:
                g = flops / (totals[lib] * 1e6)
                cells.append(f"{totals[lib]:.1f} ({g:.0f}, {100 * g / ceil[t]:.0f}%)")
            lines.append(row + " | ".join(cells) + " |")
            lines.append("")
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
