#!/usr/bin/python3
"""torch_bench.py: PyTorch timings of strata's models, the work of bench/bench_model.cpp and of the
attention benchmarks of bench/bench_kernels.cpp, for every attention plan.

The models are torch_train.py's build_model (SPEC.md §1-2: nanoGPT layout, tanh GELU, tied
embeddings, biases; standard, skip-layer split / concat and shortcut plans with strata's default
settings), written the way a PyTorch user would write them (explicit q @ k^T, mask, softmax, @ v:
torch 1.13 has no fused attention on the CPU).

Sub-benchmarks (--what, comma list), each: untimed warm-up, then timed repeats until both
--min-reps and --min-time are reached; the median is reported.
  train : one training step: zero_grad, forward, loss, backward, clip_grad_norm_(1.0), AdamW.step
          (4 fixed random batches cycled, as bench_model does).
  infer : forward of B x T tokens with all logits, under torch.inference_mode().
  gen   : greedy generation, batch 1, one-token prompt, context - 1 new tokens with a KV cache
          (preallocated per-layer K/V buffers; one token per forward after the prompt), as
          strata::generate in bench_model; time per generated token.
  attn  : causal attention core alone, forward + backward of softmax(q k^T / sqrt(hs)) v with the
          T x T score matrix, q, k, v [B, H, T, hs], for the shapes of bench_kernels.
  check : correctness of the PyTorch models: parameter count, loss at init (about ln 256), the
          KV-cache decode against the full forward, degenerate plans against standard, the
          split-mode skip heads' unused K/V rows. Exits 1 when a check fails.
With --checkpoint FILE (a strata .safetensors), it loads strata's weights and plan into the
PyTorch model and prints the validation loss on the data's validation windows (strata's
evaluate()), to compare with the loss strata logged for the same checkpoint.

Output: one JSON object per line on stdout (and appended to --json FILE); lines starting with '#'
are comments (torch version, the BLAS the process loaded).

    /usr/bin/python3 bench/compare/torch_bench.py --what train --config tiny --threads 2
    /usr/bin/python3 bench/compare/torch_bench.py --what check --config tiny,small

Run it under the tuned environment of bench/compare/README.md (compare.py does that) to measure
PyTorch at its best on this machine.
"""
import argparse
import ctypes
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import torch_train as tt  # noqa: E402  (the model, the data windows)

CONFIGS = {  # bench/bench_common.hpp: kTiny, kSmall (byte vocabulary)
    "tiny": dict(L=4, NH=4, C=128, T=128, B=16),
    "small": dict(L=6, NH=6, C=384, T=256, B=8),
}
VOCAB = 256
ATTN_SHAPES = [(16, 4, 128, 32), (8, 6, 256, 64), (1, 4, 1024, 64)]  # B, H, T, hs (bench_kernels)


# --------------------------------------------------------------------------------------------
def blas_info():
    """Which BLAS this process loaded (from /proc/self/maps), with OpenBLAS's own report."""
    libs = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1] if len(line.split()) >= 6 else ""
                name = os.path.basename(path)
                if ("blas" in name or "lapack" in name) and path not in libs:
                    libs.append(path)
    except OSError:
        pass
    info = {"libraries": libs, "name": "unknown"}
    openblas = [p for p in libs if "openblas" in os.path.basename(p)]
    if openblas:
        info["name"] = "OpenBLAS"
        try:
            lib = ctypes.CDLL(openblas[0])  # already loaded: the same handle
            for fn in ("openblas_get_config", "openblas_get_corename"):
                f = getattr(lib, fn)
                f.restype = ctypes.c_char_p
                info[fn[len("openblas_get_"):]] = f().decode()
        except (OSError, AttributeError):
            pass
    elif any("libblas.so" in os.path.basename(p) for p in libs):
        real = [os.path.realpath(p) for p in libs]
        info["name"] = "reference BLAS" if any("/blas/" in p for p in real) else "libblas.so.3"
        info["resolved"] = real
    return info


def blas_summary(info):
    s = info["name"]
    if "config" in info:
        s += f" ({info['config'].strip()}; core {info.get('corename', '?')})"
    return s


def stats(ts):
    ts = sorted(ts)
    return dict(median=statistics.median(ts), min=ts[0], max=ts[-1], n=len(ts))


def measure(fn, warmup, min_reps, min_time, max_reps=1000):
    """Calls fn warmup times untimed, then times calls until min_reps and min_time are both
    reached (or max_reps); returns the list of seconds."""
    for _ in range(warmup):
        fn()
    ts = []
    start = time.perf_counter()
    while len(ts) < max_reps and (len(ts) < min_reps or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


def train_flops(n_params, cfg):
    """../shared/perf's count (and bench_common.hpp's): 6 N tokens + 12 L T C tokens, N = all
    parameters but the position table (the tied head is wte)."""
    N = n_params - cfg["T"] * cfg["C"]
    tokens = cfg["B"] * cfg["T"]
    return 6 * N * tokens + 12 * cfg["L"] * cfg["T"] * cfg["C"] * tokens


def make_model(cfg, plan, seed=1):
    torch.manual_seed(seed)
    return tt.build_model(torch, V=VOCAB, T=cfg["T"], L=cfg["L"], NH=cfg["NH"], C=cfg["C"],
                          mlp_ratio=4, plan=plan)


def random_batches(cfg, n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randint(0, VOCAB, (cfg["B"], cfg["T"]), generator=g)
        y = torch.randint(0, VOCAB, (cfg["B"], cfg["T"]), generator=g)
        out.append((x, y))
    return out


# --------------------------------------------------------------------------------------------
def bench_train(cfg, plan, a):
    model = make_model(cfg, plan)
    groups = tt.param_groups(torch, model, 0.1)
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), eps=1e-8,
                            foreach=a.foreach)
    params = [q for g in groups for q in g["params"]]
    batches = random_batches(cfg)
    losses = []

    def step():
        x, y = batches[len(losses) % len(batches)]
        opt.zero_grad(set_to_none=True)
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())

    ts = measure(step, a.warmup, a.min_reps, a.min_time)
    st = stats(ts)
    n_params = sum(q.numel() for q in model.parameters())
    tokens = cfg["B"] * cfg["T"]
    fl = train_flops(n_params, cfg)
    return dict(ms_median=st["median"] * 1e3, ms_min=st["min"] * 1e3, ms_max=st["max"] * 1e3,
                reps=st["n"], tokens=tokens, tokens_per_s=tokens / st["median"],
                params=n_params, flops=fl, gflops=fl / st["median"] / 1e9,
                loss_first=losses[0], foreach=a.foreach)


def bench_infer(cfg, plan, a):
    model = make_model(cfg, plan).eval()
    x = random_batches(cfg, 1)[0][0]

    def fwd():
        with torch.inference_mode():
            model(x)

    st = stats(measure(fwd, a.warmup, a.min_reps, a.min_time))
    n_params = sum(q.numel() for q in model.parameters())
    tokens = cfg["B"] * cfg["T"]
    fl = train_flops(n_params, cfg) / 3
    return dict(ms_median=st["median"] * 1e3, ms_min=st["min"] * 1e3, ms_max=st["max"] * 1e3,
                reps=st["n"], tokens=tokens, tokens_per_s=tokens / st["median"],
                params=n_params, flops=fl, gflops=fl / st["median"] / 1e9)


def generate(model, prompt, n_new):
    """Greedy decoding with the KV cache: the prompt in one forward, then one token per
    forward. Returns the new tokens [1, n_new]."""
    with torch.inference_mode():
        cache = model.new_cache(prompt.shape[0])
        logits = model.forward_cached(prompt, cache, 0)[:, -1]
        pos = prompt.shape[1]
        out = []
        for i in range(n_new):
            nxt = logits.argmax(-1, keepdim=True)  # [B, 1]
            out.append(nxt)
            if i + 1 == n_new:
                break
            logits = model.forward_cached(nxt, cache, pos)[:, -1]
            pos += 1
        return torch.cat(out, 1)


def bench_gen(cfg, plan, a):
    model = make_model(cfg, plan).eval()
    prompt = torch.ones((1, 1), dtype=torch.long)  # strata's bench: prompt {1}
    n_new = cfg["T"] - 1
    outs = []
    ts = measure(lambda: outs.append(generate(model, prompt, n_new)), 1, a.gen_reps,
                 a.min_time / 2)
    assert outs[-1].shape == (1, n_new)
    st = stats(ts)
    return dict(ms_median=st["median"] * 1e3, ms_min=st["min"] * 1e3, ms_max=st["max"] * 1e3,
                reps=st["n"], new_tokens=n_new, ms_per_token=st["median"] * 1e3 / n_new,
                tokens_per_s=n_new / st["median"],
                cache_bytes=4 * sum(t.numel() for t in _cache_tensors(model.new_cache(1))))


def _cache_tensors(cache):
    for k, v in cache["layers"]:
        yield k
        yield v
    for k, v in cache["feats"].values():
        yield k
        yield v


def attn_core(q, k, v, mask):
    """Causal attention the way a PyTorch user writes it (the T x T scores are materialised)."""
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    att = att.masked_fill(~mask, float("-inf"))
    return att.softmax(-1) @ v


def bench_attn(shape, a):
    B, H, T, hs = shape
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, hs, generator=g).requires_grad_() for _ in range(3))
    dy = torch.randn(B, H, T, hs, generator=g)
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))

    def fwd_bwd():
        q.grad = k.grad = v.grad = None
        attn_core(q, k, v, mask).backward(dy)

    st = stats(measure(fwd_bwd, a.warmup, a.min_reps, a.min_time))
    # causal FLOPs (the half of q k^T and P v a causal kernel needs), forward + backward = 3x
    fl = 3 * 2 * 2 * B * H * hs * T * (T + 1) / 2
    return dict(B=B, H=H, T=T, hs=hs, ms_median=st["median"] * 1e3, ms_min=st["min"] * 1e3,
                ms_max=st["max"] * 1e3, reps=st["n"], tokens=B * T,
                tokens_per_s=B * T / st["median"], flops=fl, gflops=fl / st["median"] / 1e9)


# --------------------------------------------------------------------------------------------
def run_checks(cfg, plans, emit):
    ok = True
    ln_v = math.log(VOCAB)
    x, y = random_batches(dict(cfg, B=2), 1, seed=3)[0]
    base = None
    for plan in plans:
        model = make_model(cfg, plan)
        n_params = sum(q.numel() for q in model.parameters())
        loss = model(x, y)
        loss.backward()
        # at init the logits LN(h) wte^T have variance about C * 0.02^2: E[loss] ~ ln V + var / 2
        expect = ln_v + cfg["C"] * 0.02 ** 2 / 2
        rec = dict(plan=plan, params=n_params, flops_train=train_flops(n_params, cfg),
                   loss_init=float(loss), loss_init_expected=expect)
        good = abs(float(loss) - expect) < 0.1
        if plan == "standard":
            base = float(loss)
        # split mode: the skip heads' K/V rows of skip layers get no gradient
        p = model.plan
        if p["kind"] == "skip_layer" and p["mode"] == "split":
            C, hs, n = cfg["C"], cfg["C"] // cfg["NH"], p["heads"]
            zero = True
            for l in range(p["distance"], cfg["L"]):
                g = model.transformer.h[l].attn.c_attn.weight.grad
                for base_row in (C, 2 * C):
                    zero &= bool((g[base_row:base_row + n * hs] == 0).all())
            rec["skip_kv_rows_grad_zero"] = zero
            good &= zero
        # KV-cache decoding against the full forward (teacher forcing over the whole context)
        model.eval()
        with torch.inference_mode():
            seq = x[:1]
            full = model(seq)
            cache = model.new_cache(1)
            half = cfg["T"] // 2
            parts = [model.forward_cached(seq[:, :half], cache, 0)]
            for t in range(half, cfg["T"]):
                parts.append(model.forward_cached(seq[:, t:t + 1], cache, t))
            err = float((torch.cat(parts, 1) - full).abs().max())
        rec["kv_cache_max_abs_logit_diff"] = err
        good &= err < 1e-4
        rec["ok"] = bool(good)
        ok &= good
        emit(dict(bench="check", config=cfg["name"], **rec))
    # degenerate plans compute the standard model exactly (same seed, same weights)
    for name, plan in (("skip_layer heads 0", {"kind": "skip_layer", "heads": 0}),
                       ("skip_layer distance L", {"kind": "skip_layer", "distance": cfg["L"]}),
                       ("shortcut depths {L-1}", {"kind": "shortcut", "depths": [cfg["L"] - 1]})):
        model = make_model(cfg, plan)
        v = float(model(x, y))
        same = base is None or v == base
        emit(dict(bench="check", config=cfg["name"], plan=name, loss_init=v,
                  equals_standard=same, ok=same))
        ok &= same
    return ok


def read_safetensors(path):
    """(tensors {name: float32 ndarray}, metadata dict) of a safetensors file."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = memoryview(raw)[8 + n:]
    out = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise ValueError(f"{path}: tensor {name} is {info['dtype']}, expected F32")
        b, e = info["data_offsets"]
        out[name] = np.frombuffer(data[b:e], dtype="<f4").reshape(info["shape"])
    return out, meta


def checkpoint_loss(a, emit):
    tensors, meta = read_safetensors(a.checkpoint)
    c = json.loads(meta["strata.config"])
    model = tt.build_model(torch, V=c["vocab_size"], T=c["context_length"], L=c["n_layer"],
                           NH=c["n_head"], C=c["n_embd"], mlp_ratio=c["mlp_ratio"],
                           # since 0.2 the recipe sits next to the resolved table; 0.1 stored it alone
                           plan=c["attention"].get("recipe", c["attention"]))
    state = {k: torch.from_numpy(v.copy()) for k, v in tensors.items()
             if not k.startswith("optimizer.")}
    model.load_state_dict(state, strict=True)
    T = c["context_length"]
    _, val = tt.load_split(a.data, a.val_fraction, T)
    total, count = 0.0, 0
    with torch.inference_mode():
        for xb, yb in tt.eval_batches(val, a.batch, T, a.eval_batches):
            xt = torch.from_numpy(xb.astype(np.int64))
            yt = torch.from_numpy(yb.astype(np.int64))
            total += float(model(xt, yt)) * xt.shape[0]
            count += xt.shape[0]
    emit(dict(bench="checkpoint_loss", checkpoint=str(a.checkpoint), plan=model.plan,
              params=sum(q.numel() for q in model.parameters()), val_loss=total / count,
              eval_rows=count))


# --------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--what", default="train,infer,gen,attn",
                    help="comma list of train, infer, gen, attn, check")
    ap.add_argument("--config", default="tiny,small", help="comma list of tiny, small")
    ap.add_argument("--plans", default="standard",
                    help="comma list of " + ", ".join(tt.PLAN_NAMES))
    ap.add_argument("--threads", default="2", help="comma list of thread counts")
    ap.add_argument("--attn-shapes", default=";".join(",".join(map(str, s)) for s in ATTN_SHAPES),
                    help="B,H,T,hs;B,H,T,hs;...")
    ap.add_argument("--warmup", type=int, default=3, help="untimed repetitions first")
    ap.add_argument("--min-reps", type=int, default=5, help="at least this many timed repetitions")
    ap.add_argument("--min-time", type=float, default=2.0, help="and at least this many seconds")
    ap.add_argument("--gen-reps", type=int, default=3, help="timed generations (after 1 warm-up)")
    ap.add_argument("--foreach", action=argparse.BooleanOptionalAction, default=None,
                    help="AdamW(foreach=...); unset = torch's default (the per-tensor loop "
                         "in 1.13; both take ~1%% of a tiny step)")
    ap.add_argument("--json", default="", help="append the JSON lines to this file too")
    ap.add_argument("--checkpoint", default="", help="strata checkpoint: print its validation loss")
    ap.add_argument("--data", default=str(tt.DEFAULT_DATA), help="with --checkpoint")
    ap.add_argument("--val-fraction", type=float, default=0.1, help="with --checkpoint")
    ap.add_argument("--batch", type=int, default=16, help="with --checkpoint: evaluation batch")
    ap.add_argument("--eval-batches", type=int, default=20, help="with --checkpoint")
    a = ap.parse_args()

    torch.set_num_interop_threads(1)
    blas = blas_info()
    env = {k: os.environ.get(k) for k in ("LD_LIBRARY_PATH", "OPENBLAS_CORETYPE",
                                          "ATEN_CPU_CAPABILITY", "GLIBC_TUNABLES",
                                          "OMP_NUM_THREADS")}
    common = dict(torch=torch.__version__, blas=blas_summary(blas))

    def emit(rec):
        rec = dict(rec, **common)
        line = json.dumps(rec)
        print(line, flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(line + "\n")

    print(f"# torch {torch.__version__} | python {platform.python_version()} | BLAS: "
          f"{blas_summary(blas)} | {', '.join(blas['libraries']) or 'no BLAS mapped'}", flush=True)
    print("# env " + json.dumps({k: v for k, v in env.items() if v}), flush=True)

    if a.checkpoint:
        checkpoint_loss(a, emit)
        return
    what = [w for w in a.what.split(",") if w]
    unknown = set(what) - {"train", "infer", "gen", "attn", "check"}
    if unknown:
        sys.exit(f"torch_bench: unknown --what {sorted(unknown)}")
    plans = [p for p in a.plans.split(",") if p]
    for p in plans:
        if p not in tt.PLAN_NAMES:
            sys.exit(f"torch_bench: unknown plan '{p}', expected {', '.join(tt.PLAN_NAMES)}")
    configs = [c for c in a.config.split(",") if c]
    for c in configs:
        if c not in CONFIGS:
            sys.exit(f"torch_bench: unknown config '{c}', expected tiny or small")
    ok = True
    for th in [int(t) for t in a.threads.split(",")]:
        torch.set_num_threads(th)
        for cname in configs:
            cfg = dict(CONFIGS[cname], name=cname)
            if "check" in what:
                ok &= run_checks(cfg, plans if "standard" in plans else ["standard"] + plans,
                                 emit)
            for plan in plans:
                for w, fn in (("train", bench_train), ("infer", bench_infer), ("gen", bench_gen)):
                    if w in what:
                        emit(dict(bench=w, config=cname, plan=plan, threads=th,
                                  **fn(cfg, plan, a)))
        if "attn" in what:
            for s in a.attn_shapes.split(";"):
                shape = tuple(int(v) for v in s.split(","))
                emit(dict(bench="attn", threads=th, **bench_attn(shape, a)))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
