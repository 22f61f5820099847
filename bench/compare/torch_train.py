#!/usr/bin/python3
"""torch_train.py: trains strata's GPT in PyTorch with strata's recipe and strata's batches.

The point is an apples-to-apples loss curve: for a given --seed this script draws exactly the
training batches and validation windows that strata's `train` example draws (strata's Rng,
BatchLoader and evaluate() are re-implemented below bit for bit), trains the same model (SPEC.md
§1: nanoGPT layout, pre-LayerNorm, tanh GELU, LayerNorm eps 1e-5, tied embeddings, biases) with the
same optimiser (AdamW betas (0.9, 0.95), eps 1e-8, decay on wte and Linear weights only, global-norm
clipping, linear warm-up then cosine) and writes the same JSON-lines log. Only the initial weights
differ (same distribution, torch's RNG) and, of course, the float rounding.

    /usr/bin/python3 bench/compare/torch_train.py --log out/torch_log.jsonl
    /usr/bin/python3 bench/compare/torch_train.py --check-batches 50 --check-out /tmp/py.bin

Use /usr/bin/python3 (Debian's torch lives there). Works plain and under the tuned environment of
/work/shared/perf/peer.sh (OpenBLAS via LD_LIBRARY_PATH etc.); see bench/compare/README.md.
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT / "examples" / "data" / "moby_dick.txt"
VOCAB = 256  # ByteTokenizer

# --------------------------------------------------------------------------------------------
# strata/core/rng.hpp: xoshiro256** seeded through splitmix64 (64-bit arithmetic with masks).
M64 = (1 << 64) - 1


def _rotl(x, k):
    return ((x << k) | (x >> (64 - k))) & M64


class Rng:
    def __init__(self, seed):
        x = seed & M64
        self.s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & M64  # splitmix64: x += golden gamma
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            self.s.append(z ^ (z >> 31))

    def next_u64(self):
        s0, s1, s2, s3 = self.s
        result = (_rotl((s1 * 5) & M64, 7) * 9) & M64
        t = (s1 << 17) & M64
        s2 ^= s0
        s3 ^= s1
        s1 ^= s2
        s0 ^= s3
        s2 ^= t
        s3 = _rotl(s3, 45)
        self.s = [s0, s1, s2, s3]
        return result

    def below(self, n):
        return self.next_u64() % n


# --------------------------------------------------------------------------------------------
# strata/train/data.hpp: TextDataset split, BatchLoader, evaluate()'s windows.
def load_split(path, val_fraction, seq_len):
    """(train, val) int32 token arrays: bytes are tokens; the last val_fraction is validation."""
    raw = Path(path).read_bytes()
    n = len(raw)
    n_val = int(float(n) * val_fraction)  # Index(double(n) * val_fraction): truncation
    need = seq_len + 1
    if n - n_val < need or n_val < need:
        sys.exit(f"data: '{path}' has {n} bytes; each split needs at least {need} tokens")
    tokens = np.frombuffer(raw, dtype=np.uint8).astype(np.int32)
    return tokens[: n - n_val], tokens[n - n_val:]


class BatchLoader:
    """Each row: a window of T + 1 tokens at offset Rng::below(len - T)."""

    def __init__(self, tokens, B, T, seed):
        assert len(tokens) >= T + 1
        self.tokens, self.B, self.T, self.rng = tokens, B, T, Rng(seed)
        self.span = len(tokens) - T
        self.cols = np.arange(T, dtype=np.int64)

    def next(self):
        offs = np.array([self.rng.below(self.span) for _ in range(self.B)], dtype=np.int64)
        idx = offs[:, None] + self.cols[None, :]
        return self.tokens[idx], self.tokens[idx + 1]  # x, y: int32 [B, T]


def eval_batches(tokens, B, T, max_batches):
    """The fixed validation batches of strata::evaluate(): `use` non-overlapping windows spread
    evenly over the tokens, whole batches only."""
    windows = (len(tokens) - 1) // T
    assert windows >= 1
    use = min(windows, B * max_batches)
    if use >= B:
        use -= use % B
    cols = np.arange(T, dtype=np.int64)
    out = []
    for first in range(0, use, B):
        rows = min(B, use - first)
        offs = np.array([((first + r) * windows // use) * T for r in range(rows)], dtype=np.int64)
        idx = offs[:, None] + cols[None, :]
        out.append((tokens[idx], tokens[idx + 1]))
    return out


# --------------------------------------------------------------------------------------------
# strata/train/adamw.hpp: LRSchedule.
class LRSchedule:
    def __init__(self, max_lr, min_lr, warmup, total):
        self.max_lr, self.min_lr, self.warmup, self.total = max_lr, min_lr, warmup, total

    def at(self, step):
        if step < self.warmup:
            return self.max_lr * float(step + 1) / float(self.warmup)
        if step >= self.total:
            return self.min_lr
        ratio = float(step - self.warmup) / float(max(1, self.total - self.warmup))
        return self.min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (self.max_lr - self.min_lr)


# --------------------------------------------------------------------------------------------
# Attention plans (SPEC.md §2): which key/value sources every head of every layer attends over.
PLAN_NAMES = ("standard", "skip_split", "skip_concat", "shortcut")


def _lround(x):
    """std::lround for x >= 0 (halves away from zero; Python's round() would go to even)."""
    return int(math.floor(x + 0.5))


def resolve_plan(plan, L, NH):
    """A plan as strata's checkpoint metadata spells it (io/config_json.hpp), from a bench name
    (standard, skip_split, skip_concat, shortcut: strata's defaults, as bench/bench_model.cpp
    builds them) or from such a dict (missing numbers take strata's defaults)."""
    if plan is None or plan == "standard":
        return {"kind": "standard"}
    if isinstance(plan, str):
        if plan in ("skip_split", "skip_concat"):
            plan = {"kind": "skip_layer", "mode": plan.split("_")[1]}
        elif plan == "shortcut":
            plan = {"kind": "shortcut"}
        else:
            raise ValueError(f"unknown plan '{plan}', expected one of {', '.join(PLAN_NAMES)}")
    p = dict(plan)
    if p["kind"] == "skip_layer":
        p.setdefault("distance", max(1, _lround(0.75 * L)))
        p.setdefault("heads", max(1, _lround(0.75 * NH)))
        p.setdefault("mode", "split")
        if p["distance"] < 1 or not 0 <= p["heads"] <= NH or p["mode"] not in ("split", "concat"):
            raise ValueError(f"bad skip-layer plan {p} for {L} layers x {NH} heads")
    elif p["kind"] == "shortcut":
        raw = set(p.get("depths") or [])
        p["include_embeddings"] = bool(p.get("include_embeddings")) or 0 in raw  # idempotent
        depths = sorted(raw - {0}) or list(range(1, L))  # none listed = all of 1..L-1
        if any(not 1 <= r <= L - 1 for r in depths):
            raise ValueError(f"shortcut depths {depths} outside 1..{L - 1}")
        if p["include_embeddings"]:
            depths = [0] + depths
        p["depths"] = depths  # residual-stream depths, sorted, 0 = embeddings
        p.setdefault("feature_width", 0)
    elif p["kind"] != "standard":
        raise ValueError(f"plan kind '{p['kind']}' is not supported here (custom tables)")
    return p


def plan_groups(plan, L, NH):
    """groups[l] = [(h0, h1, sources)]: heads h0..h1-1 of block l attend, with one joint softmax,
    over `sources`, each ("layer", j) = heads h0..h1-1 of the K/V block j computed from its own
    input, or ("feature", r) = the shortcut feature of residual depth r projected with block l's
    Wk/Wv. The same table as strata's AttentionPlan::table(), grouped into head ranges."""
    groups = [[(0, NH, [("layer", l)])] for l in range(L)]
    if plan["kind"] == "skip_layer":
        d, n = plan["distance"], plan["heads"]
        for l in range(d, L):
            if n == 0:
                continue
            own, src = ("layer", l), ("layer", l - d)
            g = [(0, n, [src] if plan["mode"] == "split" else [own, src])]
            if n < NH:
                g.append((n, NH, [own]))
            groups[l] = g
    elif plan["kind"] == "shortcut":
        srcs = [("layer", L - 1) if r == L - 1 else ("feature", r) for r in plan["depths"]]
        groups[L - 1] = [(0, NH, srcs)]
    return groups


# --------------------------------------------------------------------------------------------
# The model (SPEC.md §1 and §2), built lazily so that --check-batches needs no torch.
def build_model(torch, V, T, L, NH, C, mlp_ratio, plan=None):
    """strata's GPT in PyTorch for any standard, skip-layer or shortcut plan (`plan`: a name of
    PLAN_NAMES or strata's JSON dict; None = standard). model(idx, targets) is the mean loss,
    model(idx) the logits [B, T, V]; new_cache(B) / forward_cached(idx, cache, pos) decode with
    a KV cache. With the standard plan this is the plain nanoGPT computation, op for op."""
    import torch.nn as nn
    import torch.nn.functional as F

    plan = resolve_plan(plan, L, NH)
    groups = plan_groups(plan, L, NH)
    hs = C // NH
    scale = 1.0 / math.sqrt(hs)
    # kv_heads[j]: the heads whose own K/V block j computes (read by some group of some block);
    # a skip layer in split mode computes neither the K nor the V of its skip heads.
    read = [set() for _ in range(L)]
    for l in range(L):
        for h0, h1, srcs in groups[l]:
            for kind, j in srcs:
                if kind == "layer":
                    read[j].update(range(h0, h1))
    kv_heads = [sorted(s) for s in read]
    feat_depths = [j for g in groups for _, _, srcs in g for kind, j in srcs if kind == "feature"]
    Cf = (plan.get("feature_width") or C) if plan["kind"] == "shortcut" else 0

    def heads(t):  # [B, T, n*hs] -> [B, n, T, hs]
        B, Tx, _ = t.shape
        return t.view(B, Tx, -1, hs).transpose(1, 2)

    def attend(q, srcs, mask):
        """Causal attention of q [B, g, Tq, hs] over the sources [(k, v)], each [B, g, Tk, hs],
        with one softmax; mask [Tq, Tk] (True = visible) or None (all visible)."""
        if len(srcs) == 1:  # the plain form a PyTorch user writes
            k, v = srcs[0]
            att = (q @ k.transpose(-2, -1)) * scale
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))
            return att.softmax(-1) @ v
        if q.shape[2] == 1:  # decoding one token: scores per source (no copy of the caches)
            att = torch.cat([q @ k.transpose(-2, -1) for k, _ in srcs], -1) * scale
            if mask is not None:
                att = att.masked_fill(~mask.repeat(1, len(srcs)), float("-inf"))
            p = att.softmax(-1).split([k.shape[2] for k, _ in srcs], -1)
            return sum(pi @ v for pi, (_, v) in zip(p, srcs))
        k = torch.cat([k for k, _ in srcs], 2)  # the keys of all sources side by side
        v = torch.cat([v for _, v in srcs], 2)
        att = (q @ k.transpose(-2, -1)) * scale
        if mask is not None:
            att = att.masked_fill(~mask.repeat(1, len(srcs)), float("-inf"))
        return att.softmax(-1) @ v

    class Attention(nn.Module):
        def __init__(self, l):
            super().__init__()
            self.c_attn = nn.Linear(C, 3 * C)  # rows: q, k, v blocks of C; head h owns h*hs..
            self.c_proj = nn.Linear(C, C)
            self.kv = kv_heads[l]
            self.pos = {h: i for i, h in enumerate(self.kv)}  # head -> index in this block's K/V
            if len(self.kv) < NH:  # only q and the K/V rows that are read
                rows = list(range(C)) + [base + h * hs + i for base in (C, 2 * C)
                                         for h in self.kv for i in range(hs)]
                self.register_buffer("rows", torch.tensor(rows), persistent=False)

        def project(self, x):
            """q [B, NH, T, hs] and the K, V [B, len(kv), T, hs] of the heads in self.kv."""
            if len(self.kv) == NH:
                return (heads(t) for t in self.c_attn(x).split(C, 2))
            w = self.c_attn.weight.index_select(0, self.rows)
            b = self.c_attn.bias.index_select(0, self.rows)
            m = len(self.kv) * hs
            return (heads(t) for t in F.linear(x, w, b).split([C, m, m], 2))

        def source(self, h0, h1, kv):
            """Heads h0..h1-1 of (k, v) = this block's own K/V (the heads of self.kv)."""
            i = self.pos[h0]
            assert self.kv[i:i + h1 - h0] == list(range(h0, h1)), "non-contiguous K/V heads"
            if (i, h1 - h0) == (0, kv[0].shape[1]):
                return kv
            return kv[0][:, i:i + h1 - h0], kv[1][:, i:i + h1 - h0]

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = nn.Linear(C, mlp_ratio * C)
            self.c_proj = nn.Linear(mlp_ratio * C, C)

        def forward(self, x):
            return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self, l):
            super().__init__()
            self.ln_1 = nn.LayerNorm(C, eps=1e-5)
            self.attn = Attention(l)
            self.ln_2 = nn.LayerNorm(C, eps=1e-5)
            self.mlp = MLP()

    class Feature(nn.Module):
        """Shortcut feature map of one depth: LayerNorm, Linear C->Cf, GELU, Linear Cf->C."""

        def __init__(self):
            super().__init__()
            self.ln = nn.LayerNorm(C, eps=1e-5)
            self.fc = nn.Linear(C, Cf)
            self.proj = nn.Linear(Cf, C)

        def forward(self, x):
            return self.proj(F.gelu(self.fc(self.ln(x)), approximate="tanh"))

    def feature_name(r):  # SPEC.md §3: the 0-based block whose output feeds it, or "embed"
        return "embed" if r == 0 else str(r - 1)

    class GPT(nn.Module):
        """State-dict names are SPEC.md §3's (transformer.wte.weight, transformer.h.{i}...)."""

        def __init__(self):
            super().__init__()
            modules = dict(wte=nn.Embedding(V, C), wpe=nn.Embedding(T, C),
                           h=nn.ModuleList([Block(l) for l in range(L)]),
                           ln_f=nn.LayerNorm(C, eps=1e-5))
            if feat_depths:  # after the GPT-2 tensors, as in strata's ParameterLayout
                modules["shortcut"] = nn.ModuleDict({feature_name(r): Feature()
                                                     for r in feat_depths})
            self.transformer = nn.ModuleDict(modules)
            self.plan, self.groups, self.config = plan, groups, dict(
                V=V, T=T, L=L, NH=NH, C=C, mlp_ratio=mlp_ratio)
            self.register_buffer("pos", torch.arange(T), persistent=False)
            self.register_buffer("mask", torch.tril(torch.ones(T, T, dtype=torch.bool)),
                                 persistent=False)
            # init (strata's ParameterLayout): N(0, 0.02) for wte, wpe, Linear weights and the
            # shortcut features, N(0, 0.02/sqrt(2L)) for both c_proj weights of every block,
            # biases 0, LayerNorm 1/0.
            std_res = 0.02 / math.sqrt(2.0 * L)
            with torch.no_grad():
                for name, q in self.named_parameters():
                    if name.endswith("c_proj.weight"):
                        nn.init.normal_(q, 0.0, std_res)
                    elif name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight",
                                        ".ln.weight")):
                        nn.init.ones_(q)
                    elif name.endswith(".bias"):
                        nn.init.zeros_(q)
                    else:  # wte, wpe, c_attn.weight, c_fc.weight, shortcut fc/proj weights
                        nn.init.normal_(q, 0.0, 0.02)

        def _features(self, attn, states):
            """{r: (K, V)} of the shortcut features of residual depths r, each state [B, T, C],
            projected with the final block's Wk/Wv in one product."""
            sc = self.transformer.shortcut
            z = torch.cat([sc[feature_name(r)](states[r]) for r in feat_depths], 0)
            kv = F.linear(z, attn.c_attn.weight[C:], attn.c_attn.bias[C:])
            k, v = (heads(t).chunk(len(feat_depths), 0) for t in kv.split(C, 2))
            return {r: (k[i], v[i]) for i, r in enumerate(feat_depths)}

        def _attention(self, l, attn, q, kv_of, feats, mask):
            """Output [B, T, C] (before c_proj) of block l's heads, group by group."""
            outs = []
            for h0, h1, srcs in self.groups[l]:
                s = []
                for kind, j in srcs:
                    if kind == "layer":
                        s.append(self.transformer.h[j].attn.source(h0, h1, kv_of[j]))
                    else:
                        k, v = feats[j]
                        s.append((k[:, h0:h1], v[:, h0:h1]) if (h0, h1) != (0, NH) else (k, v))
                outs.append(attend(q if (h0, h1) == (0, NH) else q[:, h0:h1], s, mask))
            y = outs[0] if len(outs) == 1 else torch.cat(outs, 1)  # [B, NH, T, hs]
            B, _, Tx, _ = y.shape
            return y.transpose(1, 2).reshape(B, Tx, C)

        def forward(self, idx, targets=None):
            tr = self.transformer
            Tx = idx.shape[1]
            h = tr.wte(idx) + tr.wpe(self.pos[:Tx])
            states = [h] if feat_depths else None  # residual depths, for the shortcuts
            mask = self.mask[:Tx, :Tx]
            kv_of = [None] * L
            for l, blk in enumerate(tr.h):
                q, k, v = blk.attn.project(blk.ln_1(h))
                kv_of[l] = (k, v)
                feats = self._features(blk.attn, states) if l == L - 1 and feat_depths else None
                a = h + blk.attn.c_proj(self._attention(l, blk.attn, q, kv_of, feats, mask))
                h = a + blk.mlp(blk.ln_2(a))
                if states is not None:
                    states.append(h)
            logits = F.linear(tr.ln_f(h), tr.wte.weight)  # tied embedding
            if targets is None:
                return logits
            return F.cross_entropy(logits.view(-1, V), targets.reshape(-1))

        # ---- KV-cache decoding ----------------------------------------------------------------
        def new_cache(self, B):
            """Preallocated K/V buffers [B, heads, T, hs]: per block for the heads it computes,
            and per shortcut feature depth."""
            z = lambda n: torch.zeros(B, n, T, hs)  # noqa: E731
            return dict(layers=[(z(len(kv)), z(len(kv))) for kv in kv_heads],
                        feats={r: (z(NH), z(NH)) for r in feat_depths})

        def forward_cached(self, idx, cache, pos):
            """Logits [B, Tn, V] of tokens idx [B, Tn] at positions pos..pos+Tn-1, appending
            their keys and values to the cache (which holds positions 0..pos-1)."""
            tr = self.transformer
            Tn = idx.shape[1]
            end = pos + Tn
            if end > T:
                raise ValueError(f"forward_cached: position {end} exceeds the context {T}")
            h = tr.wte(idx) + tr.wpe(self.pos[pos:end])
            states = [h] if feat_depths else None
            mask = None if Tn == 1 else self.mask[pos:end, :end]
            kv_of = [None] * L
            for l, blk in enumerate(tr.h):
                q, k, v = blk.attn.project(blk.ln_1(h))
                K, Vc = cache["layers"][l]
                K[:, :, pos:end] = k
                Vc[:, :, pos:end] = v
                kv_of[l] = (K[:, :, :end], Vc[:, :, :end])
                feats = None
                if l == L - 1 and feat_depths:
                    feats = {}
                    for r, (kf, vf) in self._features(blk.attn, states).items():
                        Kf, Vf = cache["feats"][r]
                        Kf[:, :, pos:end] = kf
                        Vf[:, :, pos:end] = vf
                        feats[r] = (Kf[:, :, :end], Vf[:, :, :end])
                a = h + blk.attn.c_proj(self._attention(l, blk.attn, q, kv_of, feats, mask))
                h = a + blk.mlp(blk.ln_2(a))
                if states is not None:
                    states.append(h)
            return F.linear(tr.ln_f(h), tr.wte.weight)

    return GPT()


def param_groups(torch, model, weight_decay):
    """strata's TensorInfo::decay: wte and every Linear weight decay; wpe, biases, LN do not."""
    decay_ids = {id(model.transformer.wte.weight)}
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            decay_ids.add(id(m.weight))
    decay, no_decay = [], []
    for _, q in model.named_parameters():
        (decay if id(q) in decay_ids else no_decay).append(q)
    assert len(decay) == len(decay_ids)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------------------------
def check_batches(args, train, val, T):
    """Hashes (and optionally dumps) the raw little-endian int32 bytes of x then y of the first N
    training batches, then of every validation batch; batch_hash.cpp prints the same lines."""
    loader = BatchLoader(train, args.batch, T, args.seed)
    h_train, h_eval = hashlib.sha256(), hashlib.sha256()
    dump = open(args.check_out, "wb") if args.check_out else None
    for _ in range(args.check_batches):
        x, y = loader.next()
        for a in (x, y):
            b = np.ascontiguousarray(a, dtype="<i4").tobytes()
            h_train.update(b)
            if dump:
                dump.write(b)
    ev = eval_batches(val, args.batch, T, args.eval_batches)
    for x, y in ev:
        for a in (x, y):
            b = np.ascontiguousarray(a, dtype="<i4").tobytes()
            h_eval.update(b)
            if dump:
                dump.write(b)
    if dump:
        dump.close()
    print(f"data {len(train)} train / {len(val)} val tokens, B {args.batch} T {T} seed {args.seed}")
    print(f"train batches {args.check_batches} sha256 {h_train.hexdigest()}")
    print(f"eval batches {len(ev)} sha256 {h_eval.hexdigest()}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--mlp-ratio", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=0, help="training sequence length; 0 = context")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip; 0 = off")
    p.add_argument("--eval-interval", type=int, default=200)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--seed", type=int, default=1, help="seed of the batches and of torch's init")
    p.add_argument("--threads", type=int, default=2, help="torch threads; 0 = torch's default")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--log", default="out/torch_log.jsonl", help="JSON-lines log (strata's format)")
    p.add_argument("--progress-every", type=int, default=100)
    p.add_argument("--check-batches", type=int, default=None, metavar="N",
                   help="only print sha256 of the first N training batches and the eval batches")
    p.add_argument("--check-out", default="", help="with --check-batches: also dump the raw bytes")
    args = p.parse_args()

    T = args.seq_len if args.seq_len > 0 else args.context
    if T > args.context:
        sys.exit(f"--seq-len {T} exceeds --context {args.context}")
    if not (0 < args.val_fraction < 1):
        sys.exit("--val-fraction must be in (0, 1)")
    if args.seed < 0:
        sys.exit("--seed must be >= 0 (strata's seed is unsigned)")
    for name in ("layers", "heads", "width", "context", "batch", "steps", "eval_interval",
                 "eval_batches"):
        if getattr(args, name) < 1:
            sys.exit(f"--{name.replace('_', '-')} must be >= 1")
    if args.width % args.heads:
        sys.exit("--width must be divisible by --heads")
    train, val = load_split(args.data, args.val_fraction, T)

    if args.check_batches is not None:
        check_batches(args, train, val, T)
        return

    import torch  # only now: --check-batches works without torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_model(torch, V=VOCAB, T=args.context, L=args.layers, NH=args.heads,
                        C=args.width, mlp_ratio=args.mlp_ratio)
    groups = param_groups(torch, model, args.weight_decay)
    sched = LRSchedule(args.lr, args.min_lr, args.warmup, args.steps)
    opt = torch.optim.AdamW(groups, lr=sched.at(0), betas=(0.9, 0.95), eps=1e-8)
    params = [q for g in groups for q in g["params"]]

    loader = BatchLoader(train, args.batch, T, args.seed)
    evals = [(torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y.astype(np.int64)))
             for x, y in eval_batches(val, args.batch, T, args.eval_batches)]

    def evaluate():
        total, count = 0.0, 0
        with torch.no_grad():
            for x, y in evals:
                total += float(model(x, y).item()) * x.shape[0]
                count += x.shape[0]
        return total / count

    blas = "?"
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
        blas = "OpenBLAS" if "openblas" in maps.lower() else "reference/other BLAS"
    except OSError:
        pass
    n_params = sum(q.numel() for q in model.parameters())
    print(f"torch_train: torch {torch.__version__} | {n_params} parameters | L{args.layers} "
          f"H{args.heads} C{args.width} T{T} | batch {args.batch} | {torch.get_num_threads()} "
          f"threads | {blas}\n  data {args.data}: {len(train)} training / {len(val)} validation "
          f"bytes | seed {args.seed} | {len(evals)} eval batches", flush=True)

    log_path = Path(args.log)
    if log_path.parent != Path(""):
        log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")

    def write(rec):
        rec = {k: (v if not isinstance(v, float) or math.isfinite(v) else None)
               for k, v in rec.items()}  # nlohmann::json writes NaN/inf as null
        log.write(json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n")
        log.flush()

    def on_eval(step):
        v = evaluate()
        write({"step": step, "val_loss": v})
        print(f"step {step:5d} | validation loss {v:.4f}", flush=True)

    on_eval(0)
    start = time.perf_counter()
    model.train()
    for step in range(args.steps):
        t0 = time.perf_counter()
        xb, yb = loader.next()
        x = torch.from_numpy(xb.astype(np.int64))
        y = torch.from_numpy(yb.astype(np.int64))
        opt.zero_grad(set_to_none=True)
        loss = model(x, y)
        loss.backward()
        if args.clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, args.clip).item())
        else:
            norm = math.sqrt(sum(float(q.grad.double().pow(2).sum()) for q in params
                                 if q.grad is not None))
        lr = sched.at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        sec = time.perf_counter() - t0
        done = step + 1
        lv = float(loss.item())
        write({"step": done, "train_loss": lv, "lr": lr, "grad_norm": norm, "ms": sec * 1e3,
               "tokens_per_s": args.batch * T / sec})
        if done % args.progress_every == 0 or done == args.steps:
            el = time.perf_counter() - start
            eta = el / done * (args.steps - done)
            print(f"step {done:5d}/{args.steps} | loss {lv:.4f} | lr {lr:.2e} | "
                  f"{sec * 1e3:6.1f} ms | {args.batch * T / sec:6.0f} tok/s | "
                  f"elapsed {el:.0f}s ETA {eta:.0f}s", flush=True)
        if done % args.eval_interval == 0 or done == args.steps:
            on_eval(done)
    log.close()
    print(f"done: {args.steps} steps in {time.perf_counter() - start:.1f}s; log {args.log}",
          flush=True)


if __name__ == "__main__":
    main()
