#!/usr/bin/python3
"""compare.py: strata against PyTorch on this machine, in one sitting, as one Markdown table.

It (a) measures the fp32 FMA ceiling with build/bench/strata_fma_ceiling, (b) runs strata's Google
Benchmark programs (bench_model: train / forward / generate; bench_kernels: attention_fwd_bwd),
(c) runs the same work in PyTorch (torch_bench.py: torch_train.py's model for every plan) under
the tuned environment (OpenBLAS, ATen's AVX-512 kernels where the CPU has them, malloc tunables),
with BOTH sides on the same OpenBLAS core type (--blas-core: by default the widest the CPU's flags
allow, SkylakeX or Haswell, set as OPENBLAS_CORETYPE on each benchmark command alone; the core
each side reported is printed; --strata-as-found adds strata under the environment as found;
--isa avx2 holds both sides to AVX2 + FMA, for an AVX-512 machine standing in for an AVX2-only
one),
(d) alternates strata and PyTorch over --rounds rounds and takes medians, and (e) prints a table:
time and tokens/s of each, the ratio, strata's model FLOP/s as a share of the measured ceiling,
the time of each plan relative to standard, and the project's targets.

    /usr/bin/python3 bench/compare/compare.py                       # everything, 1 and 2 threads
    /usr/bin/python3 bench/compare/compare.py --what train --config tiny --plans standard --rounds 1
    /usr/bin/python3 bench/compare/compare.py --out docs/results/speed.md --json out/speed.json
    /usr/bin/python3 bench/compare/compare.py --check               # do the PyTorch models match?
    /usr/bin/python3 bench/compare/compare.py --isa avx2 --build-dir build-avx2  # as on AVX2 only

FLOPs (../shared/perf's convention, as bench_common.hpp): a training step is 6 N tokens + 12 L T C
tokens with N the parameters without the position table (the tied head is counted once, in wte);
a forward pass is a third of that; a generated token is the forward count of one token; the
attention core counts the causal half of q k^T and P v, forward + backward = 3x forward.
See bench/compare/README.md for the tuning, the one-time OpenBLAS setup and the caveats.
"""
import argparse
import datetime
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from machine import cpu_flags, cpu_model, git_commit, loadavg  # bench/compare/machine.py

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

CONFIGS = {  # bench/bench_common.hpp
    "tiny": dict(L=4, NH=4, C=128, T=128, B=16, V=256),
    "small": dict(L=6, NH=6, C=384, T=256, B=8, V=256),
}
PLANS = ["standard", "skip_split", "skip_concat", "shortcut"]
WHATS = ["train", "infer", "gen", "attn"]
STRATA_NAME = {"train": "train", "infer": "forward", "gen": "generate"}  # bench_model's names
ATTN_SHAPES = "16,4,128,32;8,6,256,64;1,4,1024,64"  # bench_kernels' attention shapes
TUNABLES = "glibc.malloc.trim_threshold=1073741824:glibc.malloc.mmap_threshold=33554432"
OPENBLAS_PACKAGE = "libopenblas0-openmp"

# The project's targets (issue 6, raised for training by issue 19): (what, config or attention
# shape, plan, threads, kind, value).
# kind: "ratio" = strata tokens/s over PyTorch tokens/s at least value; "ceiling" = strata model
# FLOP/s at least value % of the FMA ceiling; "vs_standard" = strata time over strata's standard
# plan at most value; "report" = no target, shown for information.
TARGETS = [
    ("train", "tiny", "standard", (1, 2), "ratio", 1.5),
    ("train", "small", "standard", (1, 2), "ratio", 1.2),
    ("train", "small", "standard", (1, 2), "ceiling", 60.0),
    ("gen", "tiny", "standard", (2,), "ratio", 2.0),
    ("gen", "small", "standard", (2,), "ratio", 2.0),
    ("attn", (1, 4, 1024, 64), None, (2,), "ratio", 1.5),
    ("attn", (8, 6, 256, 64), None, (2,), "ratio", 1.5),
    ("train", "tiny", "skip_split", (2,), "vs_standard", 1.02),
    ("train", "small", "skip_split", (2,), "vs_standard", 1.02),
    ("train", "tiny", "shortcut", (2,), "report", None),
    ("train", "small", "shortcut", (2,), "report", None),
]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def die(msg):
    sys.exit("compare: " + msg)


# ---- the machine ---------------------------------------------------------------------------------
def linked_blas(binary):
    """The BLAS/LAPACK libraries a strata binary links (ldd), resolved, or 'none'."""
    try:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    except OSError:
        return "?"
    libs = []
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if "blas" in name or "lapack" in name:
            parts = line.split("=>")
            path = parts[1].split("(")[0].strip() if len(parts) > 1 else name
            libs.append(os.path.realpath(path) if os.path.exists(path) else path)
    return ", ".join(libs) if libs else "none"


# ---- the FMA ceiling -----------------------------------------------------------------------------
def fma_program(build_dir, cache):
    exe = os.path.join(build_dir, "bench", "strata_fma_ceiling")
    if os.access(exe, os.X_OK):
        return exe
    # not built (an older build directory): compile the one-file program into the cache
    exe = os.path.join(cache, "strata_fma_ceiling")
    src = os.path.join(ROOT, "bench", "fma_ceiling.cpp")
    if not os.access(exe, os.X_OK) or os.path.getmtime(exe) < os.path.getmtime(src):
        cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
        if not cxx:
            die("no strata_fma_ceiling in the build directory and no C++ compiler to build it")
        os.makedirs(cache, exist_ok=True)
        cmd = [cxx, "-std=c++17", "-O2", "-march=native", "-fopenmp", src, "-o", exe]
        log("compare: building the FMA-ceiling program: " + " ".join(cmd))
        if subprocess.run(cmd).returncode != 0:
            cmd.remove("-fopenmp")  # no OpenMP: std::thread
            subprocess.run(cmd, check=True)
    return exe


def measure_ceiling(exe, threads, want="native"):
    """The widest ISA's ceiling (the program is built with -march=native), or with want "avx2"
    the AVX2 one, which the program measures beside the widest."""
    cmd = [exe, "--threads", ",".join(map(str, threads))] + (
        ["--widest-only"] if want != "avx2" else [])
    data = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    isa = data["widest_isa"] if want != "avx2" else "avx2"
    if isa not in data["gflops"]:
        die(f"{exe} did not measure an {isa} ceiling (is this CPU without AVX2 and FMA?)")
    per = data["gflops"][isa]
    return dict(isa=isa, threading=data["threading"], raw=data,
                gflops={int(t): v["median"] for t, v in per.items()},
                gflops_max={int(t): v["max"] for t, v in per.items()})


# ---- PyTorch's tuned environment -----------------------------------------------------------------
def openblas_dir(cache):
    """A directory holding OpenBLAS's libblas.so.3 / liblapack.so.3 (OpenMP build): unpacked
    once from Debian's package into the cache (no root needed), or the installed package's."""
    pattern = os.path.join("usr", "lib", "*", "openblas-openmp", "libblas.so.3")
    found = glob.glob(os.path.join(cache, "openblas", pattern))
    if found:
        return os.path.dirname(found[0]), "unpacked in " + os.path.join(cache, "openblas")
    found = glob.glob(os.path.join("/", pattern))
    if found:
        return os.path.dirname(found[0]), "the installed package " + OPENBLAS_PACKAGE
    log(f"compare: one-time setup: unpacking Debian's {OPENBLAS_PACKAGE} (OpenBLAS, OpenMP build) "
        f"into {cache}/openblas, with apt-get download + dpkg -x (no root needed, nothing is "
        f"installed); PyTorch finds it through LD_LIBRARY_PATH.")
    if not shutil.which("apt-get") or not shutil.which("dpkg"):
        die("apt-get and dpkg are needed to fetch OpenBLAS; or install libopenblas0-openmp, or "
            "run with --torch-env plain")
    tmp = tempfile.mkdtemp(prefix="strata-openblas-")
    os.chmod(tmp, 0o755)  # apt-get downloads as user _apt when it can write there
    try:
        r = subprocess.run(["apt-get", "download", OPENBLAS_PACKAGE], cwd=tmp)
        debs = glob.glob(os.path.join(tmp, OPENBLAS_PACKAGE + "_*.deb"))
        if r.returncode != 0 or not debs:
            die(f"apt-get download {OPENBLAS_PACKAGE} failed (try apt-get update first), or use "
                "--torch-env plain")
        os.makedirs(os.path.join(cache, "openblas"), exist_ok=True)
        subprocess.run(["dpkg", "-x", debs[0], os.path.join(cache, "openblas")], check=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    found = glob.glob(os.path.join(cache, "openblas", pattern))
    if not found:
        die(f"{OPENBLAS_PACKAGE} unpacked, but no openblas-openmp/libblas.so.3 in it")
    return os.path.dirname(found[0]), "unpacked in " + os.path.join(cache, "openblas")


def blas_core_for_cpu(isa="native"):
    """OpenBLAS's widest kernels this CPU runs, from its flags: SkylakeX (AVX-512), Haswell
    (AVX2 + FMA), or None (leave OpenBLAS to choose). isa "avx2": as on an AVX2-only CPU."""
    flags = cpu_flags()
    if "avx512f" in flags and isa != "avx2":
        return "SkylakeX"
    if "avx2" in flags and "fma" in flags:
        return "Haswell"
    return None


# --isa avx2: what each side is told so that no AVX-512 instruction runs in its products or
# kernels, as on an AVX2-only CPU (AMD Zen 2, Intel Haswell to Comet Lake). strata's own code is
# held to AVX2 by its build (-march=haswell, checked from the benchmarks' context).
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "DNNL_MAX_CPU_ISA": "AVX2"}


def strata_env(core, isa="native"):
    """The environment of one strata benchmark command: the environment as found, with
    OPENBLAS_CORETYPE set to `core` for this command alone (None: as found), and with isa
    "avx2" oneDNN held to AVX2."""
    env = dict(os.environ)
    if core:
        env["OPENBLAS_CORETYPE"] = core
    if isa == "avx2":
        env.update(AVX2_ONLY)
    return env


def torch_env(mode, cache, threads, core=None, isa="native"):
    """The environment of the PyTorch process only (nothing is set globally); `core` is the
    OpenBLAS core type both sides get (blas_core_for_cpu()); isa "avx2" holds ATen's kernels
    and its oneDNN to AVX2."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    note = "as Debian ships it (whatever libblas.so.3 the system's alternatives select)"
    if mode == "tuned":
        ob, where = openblas_dir(cache)
        env["LD_LIBRARY_PATH"] = ob + (":" + env["LD_LIBRARY_PATH"]
                                       if env.get("LD_LIBRARY_PATH") else "")
        env["GLIBC_TUNABLES"] = TUNABLES
        parts = [f"LD_LIBRARY_PATH={ob} ({where})", "GLIBC_TUNABLES=" + TUNABLES]
        if core:
            env["OPENBLAS_CORETYPE"] = core
            parts.append("OPENBLAS_CORETYPE=" + core)
        if "avx512f" in cpu_flags() and isa != "avx2":
            env["ATEN_CPU_CAPABILITY"] = "avx512"
            parts.append("ATEN_CPU_CAPABILITY=avx512")
        note = "tuned: " + ", ".join(parts)
    else:
        for k in ("OPENBLAS_CORETYPE", "ATEN_CPU_CAPABILITY", "GLIBC_TUNABLES"):
            env.pop(k, None)
    if isa == "avx2":  # either mode
        env["ATEN_CPU_CAPABILITY"] = "avx2"
        env.update(AVX2_ONLY)
        note += "; held to AVX2: ATEN_CPU_CAPABILITY=avx2, " + ", ".join(
            f"{k}={v}" for k, v in AVX2_ONLY.items())
    return env, note


# ---- running the two sides -----------------------------------------------------------------------
def to_ms(value, unit):
    return value * {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_strata(a, threads, work, env=None):
    """{key: record} from one run of bench_model and/or bench_kernels at `threads` threads, in
    the environment `env` (the one of strata_env())."""
    out = {}
    jobs = []
    model_what = [STRATA_NAME[w] for w in a.what if w in STRATA_NAME]
    if model_what:
        jobs.append(("bench_model", "^(%s)/(%s)/(%s)(/|$)" % (
            "|".join(model_what), "|".join(a.config), "|".join(a.plans))))
    if "attn" in a.what:
        jobs.append(("bench_kernels", "^attention_fwd_bwd/(%s)/" % "|".join(
            "/".join(map(str, s)) for s in a.attn_shapes)))
    for prog, pattern in jobs:
        exe = os.path.join(a.build_dir, "bench", prog)
        path = os.path.join(work, f"{prog}_{threads}.json")
        cmd = [exe, f"--threads={threads}", "--benchmark_filter=" + pattern,
               "--benchmark_out=" + path, "--benchmark_out_format=json"]
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env=env)
        if r.returncode != 0:
            die(f"{' '.join(cmd)} failed:\n{r.stderr}")
        with open(path) as f:
            data = json.load(f)
        out.setdefault("_context", {}).update(data.get("context", {}))
        for b in data["benchmarks"]:
            if b.get("run_type", "iteration") != "iteration" or b.get("error_occurred"):
                continue
            parts = b["name"].split("/")
            ms = to_ms(b["real_time"], b.get("time_unit", "ns"))
            if prog == "bench_model":
                what = {v: k for k, v in STRATA_NAME.items()}[parts[0]]
                key = (what, parts[1], parts[2])
            else:
                key = ("attn", tuple(int(v) for v in parts[1:5]), None)
            out[key] = dict(ms=ms, params=b.get("params"), cache_bytes=b.get("cache_bytes"),
                            iterations=b.get("iterations"))
    return out


def check_isa(a, result):
    """--isa avx2: stop at the first strata run if its build uses AVX-512 after all."""
    simd = result.get("_context", {}).get("eigen_simd", "")
    if a.isa == "avx2" and "AVX512" in simd:
        die(f"--isa avx2: {a.build_dir} was built with AVX-512 (Eigen reports '{simd}'); build "
            "it with -DSTRATA_NATIVE=OFF -DCMAKE_CXX_FLAGS=-march=haswell")


def run_torch(a, threads, work, env):
    path = os.path.join(work, f"torch_{threads}_{time.monotonic_ns()}.jsonl")
    what = [w for w in a.what]
    cmd = [PYTHON, os.path.join(HERE, "torch_bench.py"), "--what", ",".join(what),
           "--config", ",".join(a.config), "--plans", ",".join(a.plans),
           "--threads", str(threads), "--json", path, "--min-time", str(a.torch_min_time),
           "--attn-shapes", ";".join(",".join(map(str, s)) for s in a.attn_shapes)]
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        die(f"{' '.join(cmd)} failed:\n{r.stderr}")
    out = {"_comments": [l for l in r.stdout.splitlines() if l.startswith("#")]}
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec["bench"] == "attn":
                key = ("attn", (rec["B"], rec["H"], rec["T"], rec["hs"]), None)
            else:
                key = (rec["bench"], rec["config"], rec["plan"])
            out[key] = rec
            out["_blas"] = rec.get("blas")
            out["_torch"] = rec.get("torch")
    return out


# ---- counting ------------------------------------------------------------------------------------
def n_params(cfg, plan):
    """strata's parameter count (ParameterLayout) for the bench plans."""
    V, T, L, C = cfg["V"], cfg["T"], cfg["L"], cfg["C"]
    n = V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C
    if plan == "shortcut":  # depths 1..L-2 get LN + Linear(C, C) + Linear(C, C); Cf = C
        n += (L - 2) * (2 * C * C + 4 * C)
    return n


def flops(what, cfg_or_shape, plan):
    """FLOPs of one unit of work: a step, a forward pass, one generated token, or one attention
    forward + backward."""
    if what == "attn":
        B, H, T, hs = cfg_or_shape
        return 3 * 2 * 2 * B * H * hs * T * (T + 1) / 2
    cfg = cfg_or_shape
    tokens = cfg["B"] * cfg["T"]
    N = n_params(cfg, plan) - cfg["T"] * cfg["C"]
    train = 6 * N * tokens + 12 * cfg["L"] * cfg["T"] * cfg["C"] * tokens
    return {"train": train, "infer": train / 3, "gen": train / 3 / tokens}[what]


def units(what, cfg_or_shape):
    """(tokens per unit of work, the unit's name)."""
    if what == "attn":
        B, _, T, _ = cfg_or_shape
        return B * T, "fwd+bwd"
    cfg = cfg_or_shape
    return {"train": (cfg["B"] * cfg["T"], "step"), "infer": (cfg["B"] * cfg["T"], "forward"),
            "gen": (1, "token")}[what]


# ---- the checks ----------------------------------------------------------------------------------
def run_checks(a, env):
    """PyTorch's models against strata's: torch_bench's self-checks, then for each plan a tiny
    strata model trained for a few steps, loaded into PyTorch, with the same validation loss."""
    ok = True
    cmd = [PYTHON, os.path.join(HERE, "torch_bench.py"), "--what", "check", "--config",
           ",".join(a.config), "--plans", ",".join(a.plans), "--threads", str(max(a.threads))]
    log("+ " + " ".join(cmd))
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
    print("| config | plan | parameters | loss at init | KV-cache vs full forward | ok |")
    print("|---|---|---|---|---|---|")
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            c = json.loads(line)
            diff = c.get("kv_cache_max_abs_logit_diff")
            print("| %s | %s | %s | %.4f | %s | %s |" % (
                c["config"], c["plan"], c.get("params", "—"), c["loss_init"],
                "%.1e" % diff if diff is not None else "equals standard: %s" % c.get(
                    "equals_standard"), "yes" if c["ok"] else "**no**"))
    ok &= r.returncode == 0
    train = os.path.join(a.build_dir, "examples", "train")
    if not os.access(train, os.X_OK):
        log(f"compare: {train} not built: skipping the checkpoint comparison")
        return ok
    flags = {"standard": ["--attention", "standard"],
             "skip_split": ["--attention", "skip", "--skip-mode", "split"],
             "skip_concat": ["--attention", "skip", "--skip-mode", "concat"],
             "shortcut": ["--attention", "shortcut"]}
    print("\nstrata trains the tiny model 30 steps (lr 3e-3, no warm-up); PyTorch loads the "
          "checkpoint and evaluates the same 4 validation batches:\n")
    print("| plan | strata validation loss | PyTorch, same checkpoint | difference | ok |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for plan in a.plans:
            ck, lg = os.path.join(tmp, plan + ".safetensors"), os.path.join(tmp, plan + ".jsonl")
            cmd = [train, "--steps", "30", "--warmup", "0", "--lr", "3e-3", "--eval-interval", "30",
                   "--eval-batches", "4", "--threads", "1", "--checkpoint", ck,
                   "--log", lg, "--sample-tokens", "0", "--quiet"] + flags[plan]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            with open(lg) as f:
                s_loss = [json.loads(l) for l in f if "val_loss" in l][-1]["val_loss"]
            r = subprocess.run([PYTHON, os.path.join(HERE, "torch_bench.py"), "--checkpoint", ck,
                                "--eval-batches", "4"], env=env, stdout=subprocess.PIPE, text=True,
                               check=True)
            t_loss = [json.loads(x) for x in r.stdout.splitlines()
                      if x.startswith("{")][0]["val_loss"]
            good = abs(s_loss - t_loss) < 1e-4
            ok &= good
            print("| %s | %.6f | %.6f | %.1e | %s |" % (plan, s_loss, t_loss, t_loss - s_loss,
                                                        "yes" if good else "**no**"))
    return ok


# ---- the table -----------------------------------------------------------------------------------
def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def build_rows(a, strata, torch, ceiling):
    """One row per (what, config/shape, plan, threads) with medians over rounds."""
    rows = []
    keys = []
    for what in a.what:
        if what == "attn":
            keys += [("attn", s, None) for s in a.attn_shapes]
        else:
            keys += [(what, c, p) for c in a.config for p in a.plans]
    med = {}
    for key in keys:
        for t in a.threads:
            s = [r[key]["ms"] for r in strata[t] if key in r]
            p = [r[key]["ms_median"] for r in torch[t] if key in r]
            med[key + (t,)] = (statistics.median(s) if s else None,
                               statistics.median(p) if p else None, s, p)
    for key in keys:
        what, cs, plan = key
        cfg = CONFIGS[cs] if what != "attn" else cs
        tokens, unit = units(what, cfg)
        fl = flops(what, cfg, plan)
        for t in a.threads:
            s_ms, p_ms, s_all, p_all = med[key + (t,)]
            if what == "gen":  # per generated token: T - 1 tokens per generation
                n_new = cfg["T"] - 1
                s_ms = s_ms / n_new if s_ms is not None else None
                p_ms = p_ms / n_new if p_ms is not None else None
                s_all = [x / n_new for x in s_all]
                p_all = [x / n_new for x in p_all]
            row = dict(what=what, config=cs if what != "attn" else None,
                       shape=list(cs) if what == "attn" else None, plan=plan, threads=t,
                       unit=unit, strata_ms=s_ms, torch_ms=p_ms, strata_ms_rounds=s_all,
                       torch_ms_rounds=p_all, flops=fl)
            row["strata_tokens_per_s"] = tokens / s_ms * 1e3 if s_ms else None
            row["torch_tokens_per_s"] = tokens / p_ms * 1e3 if p_ms else None
            row["ratio"] = p_ms / s_ms if s_ms and p_ms else None
            row["strata_gflops"] = fl / s_ms * 1e-6 if s_ms else None
            row["torch_gflops"] = fl / p_ms * 1e-6 if p_ms else None
            c = ceiling["gflops"].get(t) if ceiling else None
            row["strata_pct_ceiling"] = 100 * row["strata_gflops"] / c if c and s_ms else None
            row["torch_pct_ceiling"] = 100 * row["torch_gflops"] / c if c and p_ms else None
            if what != "attn" and plan != "standard":
                # median over rounds of (plan / standard) within a round: both ran in the same
                # process, so a drift of the machine between rounds cancels
                base = (what, cs, "standard")
                for side, runs, field in (("strata", strata[t], "ms"),
                                          ("torch", torch[t], "ms_median")):
                    q = [r[key][field] / r[base][field] for r in runs if key in r and base in r]
                    row[side + "_vs_standard"] = statistics.median(q) if q else None
            targets, met = [], []
            for tw, tc, tp, tt, kind, val in TARGETS:
                if (tw, tc, tp) != (what, cs, plan) or t not in tt:
                    continue
                if kind == "ratio":
                    targets.append(f"≥{val:g}x")
                    met.append(row["ratio"] >= val if row["ratio"] else None)
                elif kind == "ceiling":
                    targets.append(f"≥{val:g}% ceiling")
                    v = row["strata_pct_ceiling"]
                    met.append(v >= val if v else None)
                elif kind == "vs_standard":
                    targets.append(f"≤{val:g}x standard")
                    v = row.get("strata_vs_standard")
                    met.append(v <= val if v else None)
                else:
                    targets.append("report")
            row["target"] = ", ".join(targets) or None
            row["met"] = None if not met or None in met else all(met)
            rows.append(row)
    return rows


def work_label(r):
    if r["what"] == "attn":
        B, H, T, hs = r["shape"]
        return f"attention B{B} H{H} T{T} hs{hs}, fwd+bwd"
    name = {"train": "training step", "infer": "forward", "gen": "generation, per token"}[r["what"]]
    plan = "" if r["plan"] == "standard" else ", " + r["plan"].replace("_", " ")
    return f"{name}, {r['config']}{plan}"


def markdown(a, rows, meta):
    lines = []
    lines.append(f"strata against PyTorch, {meta['date']}, {meta['cpu']} "
                 f"({meta['cpus']} CPUs)\n")
    if meta.get("isa") == "avx2":
        lines.append("- **AVX2-only emulation**: both sides held to AVX2 + FMA on this CPU "
                     "(strata built with -march=haswell, OpenBLAS Haswell kernels, oneDNN "
                     "ONEDNN_MAX_CPU_ISA=AVX2, ATen ATEN_CPU_CAPABILITY=avx2; the ceiling is the "
                     "AVX2 FMA ceiling). The instruction mix of an AVX2-only CPU, not its caches, "
                     "clocks or memory")
    ce = meta["ceiling"]
    lines.append("- FMA ceiling (fp32, %s, measured on the spot, median of samples): %s" % (
        ce["isa"], ", ".join(f"{v:.0f} GFLOP/s on {t} thread{'s' if t > 1 else ''}"
                             for t, v in sorted(ce["gflops"].items()))))
    lines.append(f"- strata {meta['commit']}, `{meta['build_dir']}`, Eigen SIMD "
                 f"{meta.get('eigen_simd', '?')}, product backend "
                 f"{meta.get('product_backend', '?')}, BLAS linked: {meta['strata_blas']}")
    lines.append(f"- PyTorch {meta['torch']}, BLAS loaded: {meta['torch_blas']}; "
                 f"{meta['torch_env']}")
    lines.append(f"- OpenBLAS core type, both sides: {meta['blas_core']} (set on each benchmark "
                 f"command alone; the environment as found has OPENBLAS_CORETYPE="
                 f"{meta['found_core']}); what each side reported is in the two lines above")
    lines.append(f"- {meta['rounds']} round(s), strata and PyTorch alternating; medians over "
                 f"rounds "
                 f"(each round: Google Benchmark's mean over its iterations for strata, the median "
                 f"of >= 5 timed repetitions after warm-up for PyTorch); load average "
                 f"{meta['load_before']} before, {meta['load_after']} after; "
                 f"{meta['minutes']:.1f} min")
    lines.append("- ratio = strata tokens/s / PyTorch tokens/s; GFLOP/s = model FLOPs / strata's "
                 "time (6N + 12LTC per token for training, a third for a forward or a generated "
                 "token, causal q k^T + P v x3 for attention); vs standard = the plan's time / "
                 "the standard plan's in the same round, median over rounds (strata; PyTorch)\n")
    lines.append("| work | threads | strata ms | strata tokens/s | PyTorch ms | PyTorch tokens/s "
                 "| ratio | strata GFLOP/s (% of ceiling) | vs standard | target | met? |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        vs = "—"
        if r.get("strata_vs_standard") is not None or r.get("torch_vs_standard") is not None:
            vs = (f"{fmt(r.get('strata_vs_standard'), '.2f')}; "
                  f"{fmt(r.get('torch_vs_standard'), '.2f')}")
        ms_spec = ".3f" if r["what"] == "gen" else ".1f"
        gf = "—"
        if r["strata_gflops"] is not None:
            gf = f"{r['strata_gflops']:.1f}"
            if r["strata_pct_ceiling"] is not None:
                gf += f" ({r['strata_pct_ceiling']:.0f}%)"
        met = {None: "—", True: "yes", False: "**no**"}[r["met"]]
        lines.append("| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            work_label(r), r["threads"], fmt(r["strata_ms"], ms_spec),
            fmt(r["strata_tokens_per_s"], ".0f"), fmt(r["torch_ms"], ms_spec),
            fmt(r["torch_tokens_per_s"], ".0f"),
            (fmt(r["ratio"], ".2f") + "x") if r["ratio"] else "—", gf, vs,
            r["target"] or "—", met))
    return "\n".join(lines) + "\n"


def as_found_table(a, strata, strata_found, meta):
    """strata under the core type of the comparison and under the environment as found."""
    lines = [f"\nstrata under the environment as found (OPENBLAS_CORETYPE={meta['found_core']}) "
             f"against the same build with OPENBLAS_CORETYPE={meta['blas_core']}, medians over "
             f"rounds:\n",
             "| work | threads | ms, comparison's core | ms, environment as found | as found / "
             "comparison |", "|---|---|---|---|---|"]
    for t in a.threads:
        keys = sorted({k for run in strata[t] for k in run if isinstance(k, tuple)}, key=str)
        for key in keys:
            same = [run[key]["ms"] for run in strata[t] if key in run]
            found = [run[key]["ms"] for run in strata_found[t] if key in run]
            if not same or not found:
                continue
            ms_same, ms_found = statistics.median(same), statistics.median(found)
            what, cs, plan = key
            label = f"{what} {'x'.join(map(str, cs)) if isinstance(cs, tuple) else cs}" + (
                f" {plan}" if plan else "")
            lines.append(f"| {label} | {t} | {ms_same:.2f} | {ms_found:.2f} | "
                         f"{ms_found / ms_same:.2f} |")
    return "\n".join(lines) + "\n"


# ---- main ----------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", default=",".join(WHATS), help="comma list of " + ", ".join(WHATS))
    ap.add_argument("--config", default="tiny,small", help="comma list of tiny, small")
    ap.add_argument("--plans", default=",".join(PLANS), help="comma list of " + ", ".join(PLANS))
    ap.add_argument("--threads", default="1,2", help="comma list of thread counts")
    ap.add_argument("--rounds", type=int, default=3, help="strata / PyTorch alternations")
    ap.add_argument("--attn-shapes", default=ATTN_SHAPES, help="B,H,T,hs;... of bench_kernels")
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build"),
                    help="CMake build directory with bench/bench_model and bench/bench_kernels")
    ap.add_argument("--cache-dir", default=os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "strata-compare"),
        help="where the one-time OpenBLAS unpack (and, if needed, the FMA program) go")
    ap.add_argument("--torch-env", choices=["tuned", "plain"], default="tuned",
                    help="tuned: OpenBLAS AVX-512 + malloc tunables (the fair comparison); "
                         "plain: PyTorch as the system ships it")
    ap.add_argument("--blas-core", default="auto",
                    help="OpenBLAS core type (OPENBLAS_CORETYPE) BOTH sides run with, set on each "
                         "benchmark command alone: auto = the widest the CPU's flags allow "
                         "(SkylakeX with AVX-512, Haswell with AVX2), a core name, or "
                         "'environment' = whatever the environment says, for both")
    ap.add_argument("--isa", choices=["native", "avx2"], default="native",
                    help="native: each side at the CPU's full width; avx2: both sides held to "
                         "AVX2 + FMA as on an AVX2-only CPU (OpenBLAS Haswell, "
                         "ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2, the AVX2 FMA "
                         "ceiling), for an AVX-512 machine standing in for one; --build-dir "
                         "must then be a -march=haswell build (STRATA_NATIVE=OFF)")
    ap.add_argument("--strata-as-found", action="store_true",
                    help="also run strata under the environment as found (its OPENBLAS_CORETYPE "
                         "untouched) and show that in a second table")
    ap.add_argument("--settle", type=float, default=15.0,
                    help="seconds of idle before each side's run (default %(default)s)")
    ap.add_argument("--torch-min-time", type=float, default=1.0,
                    help="seconds of timed repetitions per PyTorch measurement (at least 5 reps)")
    ap.add_argument("--out", help="also write the Markdown table to this file")
    ap.add_argument("--json", help="write every measurement and the table's rows to this file")
    ap.add_argument("--check", action="store_true",
                    help="only check that the PyTorch models match strata's (losses, KV cache)")
    a = ap.parse_args()

    a.what = [w for w in a.what.split(",") if w]
    a.config = [c for c in a.config.split(",") if c]
    a.plans = [p for p in a.plans.split(",") if p]
    a.threads = [int(t) for t in a.threads.split(",") if t]
    a.attn_shapes = [tuple(int(v) for v in s.split(",")) for s in a.attn_shapes.split(";") if s]
    a.build_dir = os.path.abspath(a.build_dir)
    for lst, allowed, name in ((a.what, WHATS, "--what"), (a.config, CONFIGS, "--config"),
                               (a.plans, PLANS, "--plans")):
        bad = [x for x in lst if x not in allowed]
        if bad:
            die(f"{name}: unknown {bad}, expected some of {', '.join(allowed)}")
    if any(len(s) != 4 for s in a.attn_shapes) or a.rounds < 1 or min(a.threads) < 1:
        die("bad --attn-shapes, --rounds or --threads")
    need = (["bench_model"] if any(w in STRATA_NAME for w in a.what) else []) + (
        ["bench_kernels"] if "attn" in a.what else [])
    missing = [p for p in need if not os.access(os.path.join(a.build_dir, "bench", p), os.X_OK)]
    if missing and not a.check:
        die(f"no {', '.join(missing)} in {a.build_dir}/bench: build the benchmarks (Release, "
            f"-march=native), e.g. cmake -S {ROOT} -B {a.build_dir} -DCMAKE_BUILD_TYPE=Release "
            f"&& cmake --build {a.build_dir} --target bench_model bench_kernels strata_fma_ceiling")
    if not os.path.exists(PYTHON):
        die("no python3 with torch")

    if a.blas_core == "auto":
        a.core = blas_core_for_cpu(a.isa)
    elif a.blas_core == "environment":
        a.core = os.environ.get("OPENBLAS_CORETYPE") or None
    else:
        a.core = a.blas_core
    found_core = os.environ.get("OPENBLAS_CORETYPE") or "unset"
    log(f"compare: OpenBLAS core type for both sides: {a.core or 'OpenBLAS chooses'} "
        f"(environment as found: OPENBLAS_CORETYPE={found_core})")
    if a.check:
        env, _ = torch_env(a.torch_env, a.cache_dir, max(a.threads), a.core, a.isa)
        sys.exit(0 if run_checks(a, env) else 1)

    start = time.time()
    load_before = loadavg()
    log("compare: measuring the FMA ceiling ...")
    ceiling = measure_ceiling(fma_program(a.build_dir, a.cache_dir), a.threads, a.isa)
    log("compare: FMA ceiling (%s): %s GFLOP/s" % (ceiling["isa"], ", ".join(
        f"{t} thread(s) {v:.0f}" for t, v in sorted(ceiling["gflops"].items()))))
    envs = {t: torch_env(a.torch_env, a.cache_dir, t, a.core, a.isa) for t in a.threads}
    strata = {t: [] for t in a.threads}
    strata_found = {t: [] for t in a.threads}
    torch = {t: [] for t in a.threads}
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="strata-compare-") as work:
        try:
            for r in range(a.rounds):
                for t in a.threads:
                    order = ["strata", "torch"] if (r + a.threads.index(t)) % 2 == 0 else [
                        "torch", "strata"]
                    for side in order:
                        # After a process that used GBs (PyTorch's), the kernel reclaims and
                        # compacts memory for a while; 2-thread runs that start at once lose one
                        # of their cores to it (seen here: the first strata benchmarks ~40% slow).
                        time.sleep(a.settle)
                        t0 = time.time()
                        if side == "strata":
                            strata[t].append(run_strata(a, t, work, strata_env(a.core, a.isa)))
                            check_isa(a, strata[t][-1])
                            if a.strata_as_found:
                                strata_found[t].append(run_strata(a, t, work, dict(os.environ)))
                        else:
                            torch[t].append(run_torch(a, t, work, envs[t][0]))
                        log(f"compare: round {r + 1}/{a.rounds}, {t} thread(s): {side} took "
                            f"{time.time() - t0:.0f} s (load average {loadavg()})")
        except KeyboardInterrupt:  # Ctrl-C: the table of what was measured so far
            interrupted = True
            log("compare: interrupted; the table holds the rounds completed so far")
    ctx = next((x["_context"] for t in a.threads for x in strata[t] if "_context" in x), {})
    any_torch = next((x for t in a.threads for x in torch[t]), {})
    meta = dict(date=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
                cpu=cpu_model(), cpus=os.cpu_count(), commit=git_commit(),
                build_dir=os.path.relpath(a.build_dir, ROOT) if a.build_dir.startswith(ROOT)
                else a.build_dir,
                eigen_simd=ctx.get("eigen_simd", "?"),
                product_backend=ctx.get("product_backend", "not reported"),
                strata_blas=linked_blas(os.path.join(a.build_dir, "bench", "bench_model")),
                torch=any_torch.get("_torch", "?"), torch_blas=any_torch.get("_blas", "?"),
                torch_env=envs[a.threads[0]][1], blas_core=a.core or "OpenBLAS chooses",
                found_core=found_core, isa=a.isa, rounds=a.rounds, threads=a.threads,
                load_before=load_before, load_after=loadavg(),
                minutes=(time.time() - start) / 60, ceiling=ceiling)
    rows = build_rows(a, strata, torch, ceiling)
    # shapes must agree: strata's parameter counter vs PyTorch's vs the formula
    warnings = []
    for t in a.threads:
        for rs, rt in zip(strata[t], torch[t]):
            for key, rec in rs.items():
                if key[0] == "train" and isinstance(rec, dict) and rec.get("params"):
                    other = rt.get(key, {}).get("params")
                    formula = n_params(CONFIGS[key[1]], key[2])
                    if rec["params"] != formula or (other and other != formula):
                        warnings.append(f"parameters of {key}: strata {rec['params']}, PyTorch "
                                        f"{other}, formula {formula}")
    table = markdown(a, rows, meta)
    if a.strata_as_found:
        table += as_found_table(a, strata, strata_found, meta)
    if interrupted:
        warnings.append("interrupted: not every round ran")
    busy = float(meta["load_before"].split()[0])  # after the run it includes this run's own
    if busy > 0.5:
        warnings.append(f"the load average was {busy:.1f} on {os.cpu_count()} CPUs before the run: "
                        "other work shared the cores, so absolute figures (the 2-thread ones "
                        "most) are low; compare ratios only")
    for w in sorted(set(warnings)):
        table += f"\nWARNING: {w}\n"
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table)
    if a.json:
        def key_str(k):
            if isinstance(k, str):
                return k
            what, cs, plan = k
            cs = "x".join(map(str, cs)) if isinstance(cs, tuple) else cs
            return "/".join(x for x in (what, cs, plan) if x)

        def clean(d):
            return {key_str(k): v for k, v in d.items()}

        with open(a.json, "w") as f:
            json.dump(dict(meta=meta, rows=rows,
                           strata={t: [clean(x) for x in v] for t, v in strata.items()},
                           torch={t: [clean(x) for x in v] for t, v in torch.items()}),
                      f, indent=1, default=str)


if __name__ == "__main__":
    main()
