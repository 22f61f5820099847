#!/usr/bin/python3
"""context_sweep.py: time and peak memory of a training step against context length, per plan.

Runs build-*/bench/context_sweep once per (plan, T, batch) -- one process each, so that every peak
RSS belongs to one configuration -- and writes the JSON lines, a Markdown table with linear fits of
memory against T, and a PNG (time per step and peak memory vs T, one line per plan, with the bytes a
[T, T]-materialising attention would keep for its probabilities as a dashed reference).

    /usr/bin/python3 bench/compare/context_sweep.py                     # 4 plans x T 128..2048, B = 2048/T
    /usr/bin/python3 bench/compare/context_sweep.py --batch auto,1      # also a fixed batch of 1
    /usr/bin/python3 bench/compare/context_sweep.py --plans standard --T 512,1024 --steps 5
    /usr/bin/python3 bench/compare/context_sweep.py --replot out/context_sweep.jsonl  # no runs
    /usr/bin/python3 bench/compare/context_sweep.py --torch             # + bench/compare/torch_train.py's model

--batch auto keeps the tokens per step fixed (--tokens, default 2048, B = tokens / T): per-token work
then grows with T only through attention, and memory that is linear in T stays flat. A fixed batch
(--batch 1) shows the linear growth itself. Use Debian's /usr/bin/python3 (matplotlib; torch for
--torch).
"""
import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import time

from machine import cpu_model, loadavg  # bench/compare/machine.py

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PLANS = ["standard", "skip_split", "skip_concat", "shortcut"]
LABELS = {"standard": "standard", "skip_split": "skip-layer split (d3 n3)",
          "skip_concat": "skip-layer concat (d3 n3)", "shortcut": "shortcuts (J=1,2,3)",
          "torch_standard": "PyTorch standard (T×T)"}
MiB = 1024.0 * 1024.0


def default_binary():
    for d in ("build", "build-sweep"):
        p = os.path.join(ROOT, d, "bench", "context_sweep")
        if os.path.exists(p):
            return p
    return os.path.join(ROOT, "build", "bench", "context_sweep")


# ---- PyTorch side (optional): one configuration per process, like the C++ program ---------------
def status_bytes(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return -1


def torch_worker(a):
    """One (T, B) training-step measurement of torch_train.py's standard model, one JSON line."""
    import resource
    rss_start = status_bytes("VmRSS")
    import torch
    sys.path.insert(0, HERE)
    from torch_train import build_model, param_groups
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    L, NH, C, V = 4, 4, 128, 256
    model = build_model(torch, V, a.T, L, NH, C, 4)
    opt = torch.optim.AdamW(param_groups(torch, model, 0.1), lr=1e-4, betas=(0.9, 0.95), eps=1e-8)
    g = torch.Generator().manual_seed(1)
    xs = [torch.randint(0, V, (a.B, a.T), generator=g) for _ in range(4)]
    ys = [torch.randint(0, V, (a.B, a.T), generator=g) for _ in range(4)]
    rss_model = status_bytes("VmRSS")
    it = [0]

    def step():
        loss = model(xs[it[0] % 4], ys[it[0] % 4])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        it[0] += 1

    for _ in range(max(1, a.warmup)):
        step()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    ms = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        ms.append((time.perf_counter() - t0) * 1000.0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    med = statistics.median(ms)
    n_params = sum(p.numel() for p in model.parameters())
    print(json.dumps({
        "plan": "torch_standard", "T": a.T, "B": a.B, "tokens_per_step": a.B * a.T, "L": L, "NH": NH,
        "C": C, "threads": torch.get_num_threads(), "warmup": a.warmup, "steps": a.steps,
        "ms_median": med, "ms_min": min(ms), "ms_max": max(ms),
        "tokens_per_s": a.B * a.T / (med / 1000.0), "ms": ms, "params": n_params,
        "peak_rss_bytes": peak, "rss_start_bytes": rss_start, "rss_model_bytes": rss_model,
        "step_peak_rss_bytes": status_bytes("VmHWM") if reset else -1,
        "step_rss_growth_bytes": peak - rss_model,
        "txt_probs_bytes": 4 * L * a.B * NH * a.T * a.T,
        "txt_probs_standard_bytes": 4 * L * a.B * NH * a.T * a.T,
        "torch_version": torch.__version__}))


# ---- running the sweep ----------------------------------------------------------------------------
def batch_of(spec, T, tokens):
    return max(1, tokens // T) if spec == "auto" else int(spec)


def series_name(spec, tokens):
    return "%d tokens per step (B = %d/T)" % (tokens, tokens) if spec == "auto" else "batch %s" % spec


def run_one(cmd, nice):
    if nice:
        cmd = ["nice", "-n", str(nice)] + cmd
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def steps_for(args, T):
    """--steps, or --steps-large for T >= --large-from (fewer timed steps where a step is slow)."""
    return args.steps_large if (args.steps_large and T >= args.large_from) else args.steps


def run_sweep(args):
    if not os.path.exists(args.bin):
        sys.exit("context_sweep.py: %s not found; build it with: cmake --build build --target "
                 "context_sweep" % args.bin)
    recs, done = [], {}
    t_start = time.time()
    load_before = loadavg()
    for r in range(args.rounds):
        for spec in args.batch:
            for T in args.T:
                B = batch_of(spec, T, args.tokens)
                # interleave the plans within each T, rotating the order between rounds
                k = r % max(1, len(args.plans))
                plans = args.plans[k:] + args.plans[:k]
                for plan in plans:
                    if (plan, T, B, r) in done:  # e.g. T = 2048 with --batch auto,1: same run
                        rec = dict(done[(plan, T, B, r)], series=series_name(spec, args.tokens))
                        recs.append(rec)
                        print(json.dumps(rec), file=args.jsonl_file, flush=True)
                        continue
                    cmd = [args.bin, "--plan", plan, "--T", str(T), "--batch", str(B),
                           "--steps", str(steps_for(args, T)), "--warmup", str(args.warmup),
                           "--threads", str(args.threads)]
                    rec = run_one(cmd, args.nice)
                    rec.update(series=series_name(spec, args.tokens), round=r)
                    done[(plan, T, B, r)] = rec
                    recs.append(rec)
                    print(json.dumps(rec), file=args.jsonl_file, flush=True)
                if args.torch and ("torch", T, B, r) in done:
                    rec = dict(done[("torch", T, B, r)], series=series_name(spec, args.tokens))
                    recs.append(rec)
                    print(json.dumps(rec), file=args.jsonl_file, flush=True)
                elif args.torch:
                    cmd = [sys.executable, os.path.abspath(__file__), "--torch-worker", "--T", str(T),
                           "--B", str(B), "--steps", str(steps_for(args, T)), "--warmup",
                           str(args.warmup), "--threads", str(args.threads)]
                    rec = run_one(cmd, args.nice)
                    rec.update(series=series_name(spec, args.tokens), round=r)
                    done[("torch", T, B, r)] = rec
                    recs.append(rec)
                    print(json.dumps(rec), file=args.jsonl_file, flush=True)
    meta = {"meta": True, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "cpu": cpu_model(), "threads": args.threads, "nice": args.nice, "rounds": args.rounds,
            "loadavg_before": load_before, "loadavg_after": loadavg(),
            "seconds": round(time.time() - t_start, 1), "note": args.note}
    print(json.dumps(meta), file=args.jsonl_file, flush=True)
    return recs, meta


# ---- summarising ----------------------------------------------------------------------------------
def combine(recs, how="median"):
    """Median (or min) over rounds of each (series, plan, T)'s median step time; memory is
    deterministic up to page noise (medians)."""
    groups = {}
    for r in recs:
        groups.setdefault((r["series"], r["plan"], r["T"]), []).append(r)
    out = []
    for (series, plan, T), rs in groups.items():
        c = dict(rs[0])
        pick = min if how == "min" else statistics.median
        c["ms_median"] = pick(x["ms_median"] for x in rs)
        c["tokens_per_s"] = c["tokens_per_step"] / (c["ms_median"] / 1000.0)
        c["peak_rss_bytes"] = statistics.median(x["peak_rss_bytes"] for x in rs)
        c["step_rss_growth_bytes"] = statistics.median(x["step_rss_growth_bytes"] for x in rs)
        c["rounds"] = len(rs)
        out.append(c)
    return out


def linfit(xs, ys):
    """Least squares y = a + b x; returns a, b and the largest |residual| / y."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    a = my - b * mx
    worst = max(abs(y - (a + b * x)) / y for x, y in zip(xs, ys)) if ys else 0.0
    return a, b, worst


def loglog_slope(xs, ys):
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    return linfit(lx, ly)[1] if len(xs) > 1 else float("nan")


def mib(x):
    return "%.1f" % (x / MiB) if x is not None and x >= 0 else "-"


def markdown(rows, meta, args):
    out = []
    series = sorted({r["series"] for r in rows}, key=lambda s: (not s.startswith(str(args.tokens)), s))
    out.append("# Context-length sweep: time and memory of a training step\n")
    out.append("Tiny width (L4 H4 C128, byte vocabulary), context_length = T, random tokens; a step is "
               "forward_backward + clip_grad_norm + AdamW. One process per row "
               "(`build/bench/context_sweep`), run by `bench/compare/context_sweep.py`.\n")
    if meta:
        out.append("Run: %s, %s, %s threads, nice %s, %s round(s), %s s; load average %s before, %s "
                   "after.\n" % (meta.get("date"), meta.get("cpu"), meta.get("threads"),
                                 meta.get("nice"), meta.get("rounds"), meta.get("seconds"),
                                 meta.get("loadavg_before"), meta.get("loadavg_after")))
        if meta.get("note"):
            out.append(meta["note"] + "\n")
    out.append("Columns: **ms/step** median of the timed steps; **peak RSS** the process's "
               "high-water mark (getrusage), **step growth** peak RSS minus the RSS after building "
               "the model and optimiser (what the steps add: the activation workspace and Eigen's "
               "product buffers); **workspace** the activation and backward buffers of the model "
               "(GPT::workspace_bytes); **attn saved** what the attention kernel keeps for "
               "backward (out and lse of every layer); **T×T probs** what an attention that "
               "materialises its probabilities would keep instead (4 bytes x B x T x keys per query "
               "row, summed over heads and layers; for standard L·B·NH·T²·4).\n")
    for s in series:
        rs = sorted([r for r in rows if r["series"] == s],
                    key=lambda r: (r["T"], (PLANS + ["torch_standard"]).index(r["plan"])))
        out.append("## %s\n" % s)
        out.append("| T | B | plan | ms/step | tokens/s | peak RSS MiB | step growth MiB | "
                   "workspace MiB | attn saved MiB | T×T probs MiB |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in rs:
            out.append("| %d | %d | %s | %.1f | %.0f | %s | %s | %s | %s | %s |" % (
                r["T"], r["B"], r["plan"], r["ms_median"], r["tokens_per_s"],
                mib(r["peak_rss_bytes"]), mib(r["step_rss_growth_bytes"]),
                mib(r.get("workspace_bytes")), mib(r.get("attention_saved_bytes")),
                mib(r.get("txt_probs_bytes"))))
        out.append("")
        out.append("Memory against T, per plan: least-squares line `bytes = a + b·T` over the "
                   "sweep (b in KiB per position, worst relative residual), and the log-log slope "
                   "(1 = linear, 2 = quadratic; 0 = flat).\n")
        out.append("| plan | peak RSS: b KiB/pos | worst residual | log-log slope of step growth "
                   "| log-log slope of attn saved | log-log slope of T×T probs |")
        out.append("|---|---|---|---|---|---|")
        for plan in [p for p in PLANS + ["torch_standard"] if any(r["plan"] == p for r in rs)]:
            pr = [r for r in rs if r["plan"] == plan]
            if len(pr) < 2:
                continue
            Ts = [r["T"] for r in pr]
            a, b, worst = linfit(Ts, [r["peak_rss_bytes"] for r in pr])
            sg = loglog_slope(Ts, [max(1, r["step_rss_growth_bytes"]) for r in pr])
            sa = (loglog_slope(Ts, [r["attention_saved_bytes"] for r in pr])
                  if "attention_saved_bytes" in pr[0] else float("nan"))
            sq = loglog_slope(Ts, [r["txt_probs_bytes"] for r in pr])
            out.append("| %s | %.1f | %.1f%% | %.2f | %s | %.2f |" % (
                plan, b / 1024.0, 100 * worst, sg, "-" if math.isnan(sa) else "%.2f" % sa, sq))
        out.append("")
    return "\n".join(out) + "\n"


MARKERS = {"standard": "o", "skip_split": "s", "skip_concat": "^", "shortcut": "D",
           "torch_standard": "v"}
COLORS = {"standard": "C0", "skip_split": "C1", "skip_concat": "C2", "shortcut": "C3",
          "torch_standard": "C7"}


def plot(rows, meta, args, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    series = sorted({r["series"] for r in rows}, key=lambda s: (not s.startswith(str(args.tokens)), s))
    mem_key = "peak_rss_bytes" if args.memory == "peak" else "step_rss_growth_bytes"
    mem_what = ("peak RSS of the process" if args.memory == "peak"
                else "RSS growth during the steps (peak - after building)")
    fig, axes = plt.subplots(len(series), 2, figsize=(12, 4.6 * len(series) + 0.6), squeeze=False)
    handles = {}
    for row, s in enumerate(series):
        rs = [r for r in rows if r["series"] == s]
        Ts = sorted({r["T"] for r in rs})
        ax_t, ax_m = axes[row]
        for plan in [p for p in PLANS + ["torch_standard"] if any(r["plan"] == p for r in rs)]:
            pr = sorted([r for r in rs if r["plan"] == plan], key=lambda r: r["T"])
            x = [r["T"] for r in pr]
            # standard and both skip plans need the same memory: distinct hollow markers keep
            # every line visible where they overlap
            style = dict(color=COLORS[plan], marker=MARKERS[plan], ms=6, mfc="none", lw=1.4,
                         label=LABELS[plan], ls="-." if plan.startswith("torch") else "-")
            ax_t.plot(x, [r["ms_median"] for r in pr], **style)
            ax_m.plot(x, [r[mem_key] / MiB for r in pr], **style)
        ref = {}
        for r in rs:
            if "attention_saved_bytes" in r:
                ref[r["T"]] = (r["attention_saved_bytes"], r["txt_probs_standard_bytes"])
        if ref:
            x = sorted(ref)
            ax_m.plot(x, [ref[t][0] / MiB for t in x], color="k", ls=":", lw=1.2,
                      label="strata attention saved state (out + lse, all layers)")
            ax_m.plot(x, [ref[t][1] / MiB for t in x], color="k", ls="--", lw=1.2,
                      label="T×T probabilities a materialising attention keeps (L·B·NH·T²·4)")
        for ax in (ax_t, ax_m):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(Ts)
            ax.set_xticklabels([str(t) for t in Ts])
            ax.set_xlabel("context length T")
            ax.grid(True, which="both", alpha=0.3)
        ax_t.set_ylabel("ms per training step (median)")
        ax_t.set_title("time per step, %s" % s, fontsize=10)
        ax_m.set_title("memory, %s" % s, fontsize=10)
        ax_m.set_ylabel("MiB (solid: %s)" % mem_what, fontsize=8)
        for h, lab in zip(*ax_m.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    title = "strata tiny model (L4 H4 C128), training step vs context length"
    if meta:
        title += " — %s threads, %s" % (meta.get("threads"), meta.get("cpu"))
    fig.suptitle(title, fontsize=11)
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=3, fontsize=8,
               frameon=False)
    fig.tight_layout(rect=(0, 0.09 / len(series), 1, 1))
    fig.savefig(path, dpi=110)
    print("wrote " + path, file=sys.stderr)


def read_jsonl(path):
    recs, meta = [], None
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            d = json.loads(line)
            if d.get("meta"):
                meta = d
            else:
                recs.append(d)
    return recs, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--bin", default=default_binary(), help="the context_sweep program")
    ap.add_argument("--plans", default=",".join(PLANS), help="comma list of " + ", ".join(PLANS))
    ap.add_argument("--T", default="128,256,512,1024,2048", help="comma list of context lengths")
    ap.add_argument("--batch", default="auto",
                    help="comma list of batch sizes; auto = --tokens / T (one series each)")
    ap.add_argument("--tokens", type=int, default=2048, help="tokens per step for --batch auto")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    ap.add_argument("--steps-large", type=int, default=0,
                    help="timed steps for T >= --large-from (0 = --steps)")
    ap.add_argument("--large-from", type=int, default=1024)
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first allocates)")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the sweep; medians over rounds")
    ap.add_argument("--combine", choices=["median", "min"], default="median",
                    help="how rounds (or several --replot files) combine step times: the median, "
                         "or the fastest round (on a machine shared with other jobs)")
    ap.add_argument("--nice", type=int, default=0, help="run each program under nice -n N")
    ap.add_argument("--torch", action="store_true",
                    help="also torch_train.py's standard model (materialises T×T); slow without a "
                         "tuned BLAS")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "context_sweep"),
                    help="output prefix: writes PREFIX.jsonl, PREFIX.md, PREFIX.png")
    ap.add_argument("--memory", choices=["peak", "growth"], default="peak",
                    help="what the memory panel's solid lines show: the peak RSS, or its growth "
                         "during the steps (fairer against --torch, whose libraries take ~240 MiB)")
    ap.add_argument("--note", default="", help="a sentence for the Markdown header (kept in the JSON)")
    ap.add_argument("--replot", metavar="JSONL", nargs="+",
                    help="only summarise and plot earlier runs (several files are merged)")
    ap.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--B", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.torch_worker:
        args.T = int(args.T)
        torch_worker(args)
        return
    args.plans = [p for p in args.plans.split(",") if p]  # empty + --torch: PyTorch only
    for p in args.plans:
        if p not in PLANS:
            sys.exit("context_sweep.py: unknown plan %r (choose from %s)" % (p, ", ".join(PLANS)))
    args.T = [int(t) for t in args.T.split(",")]
    args.batch = [b.strip() for b in args.batch.split(",") if b.strip()]
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)

    if args.replot:
        recs, meta = [], None
        for path in args.replot:
            r, m = read_jsonl(path)
            recs += r
            meta = meta or m
        if args.note:
            meta = dict(meta or {}, note=args.note)
    else:
        with open(args.out + ".jsonl", "w") as f:
            args.jsonl_file = f
            recs, meta = run_sweep(args)
        print("wrote " + args.out + ".jsonl", file=sys.stderr)
    rows = combine(recs, args.combine)
    md = markdown(rows, meta, args)
    with open(args.out + ".md", "w") as f:
        f.write(md)
    print("wrote " + args.out + ".md", file=sys.stderr)
    plot(rows, meta, args, args.out + ".png")
    sys.stdout.write(md)


if __name__ == "__main__":
    main()
