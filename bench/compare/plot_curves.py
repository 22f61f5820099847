#!/usr/bin/python3
"""plot_curves.py: loss curves of strata / PyTorch training logs (strata's JSON-lines format).

    /usr/bin/python3 bench/compare/plot_curves.py strata=out/strata_log.jsonl \\
        torch=out/torch_log.jsonl --out out/curves.png

Each argument is LABEL=PATH (or just PATH: the label is the file name). Plots validation loss vs
step (solid, markers) and the training loss smoothed by a moving average (same colour, lighter)
into one PNG, and prints a Markdown table of the final validation losses.
"""
import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_log(path):
    train, val = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON ({e})")
            if "val_loss" in r:
                val.append((r["step"], r["val_loss"]))
            elif "train_loss" in r:
                train.append(r)
    # a resumed run appends: keep the last record of every step
    val = sorted(dict(val).items())
    train = sorted({r["step"]: r for r in train}.values(), key=lambda r: r["step"])
    return train, val


def smooth(values, window):
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def describe(train):
    """What the log itself tells about the recipe: steps, tokens per step, peak lr, warm-up."""
    if not train:
        return ""
    steps = train[-1]["step"]
    lrs = [r["lr"] for r in train]
    peak = max(lrs)
    warm = next((r["step"] for r in train if r["lr"] >= peak), 0)
    tok = [r["tokens_per_s"] * r["ms"] / 1e3 for r in train if r.get("ms")]
    tok = f"{round(statistics.median(tok))} tokens/step, " if tok else ""
    return f"{steps} steps, {tok}lr {peak:g} -> {lrs[-1]:.2g}, warm-up {warm}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("logs", nargs="+", metavar="LABEL=PATH")
    p.add_argument("--out", default="curves.png", help="PNG to write")
    p.add_argument("--title", default="L4 H4 C128 T128 B16, byte-level Moby Dick",
                   help="first title line (the model configuration)")
    p.add_argument("--smooth", type=int, default=50, help="moving-average window of train loss")
    p.add_argument("--no-train", action="store_true", help="validation curves only")
    p.add_argument("--ymax", type=float, default=None, help="upper y limit (default: auto)")
    args = p.parse_args()

    runs = []
    for a in args.logs:
        label, sep, path = a.partition("=")
        if not sep:
            label, path = Path(a).stem, a
        if not Path(path).is_file():
            sys.exit(f"no such log: {path}")
        train, val = read_log(path)
        if not train and not val:
            sys.exit(f"{path}: no training or validation records")
        runs.append((label, path, train, val))

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lo, hi = math.inf, -math.inf
    for i, (label, _, train, val) in enumerate(runs):
        c = colors[i % len(colors)]
        if train and not args.no_train:
            steps = [r["step"] for r in train]
            ys = smooth([r["train_loss"] for r in train], args.smooth)
            ax.plot(steps, ys, color=c, alpha=0.3, lw=1,
                    label=f"{label} train (avg {args.smooth})")
            lo, hi = min(lo, min(ys)), max(hi, max(ys))
        if val:
            ax.plot([s for s, _ in val], [v for _, v in val], color=c, lw=2, marker="o", ms=3,
                    label=f"{label} validation")
            lo = min(lo, min(v for _, v in val))
            hi = max(hi, max(v for _, v in val))
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / byte)")
    recipe = describe(runs[0][2])
    ax.set_title(args.title + (f"\n{recipe}" if recipe else ""), fontsize=10)
    ax.grid(alpha=0.3)
    if args.ymax is not None:
        ax.set_ylim(top=args.ymax)
    elif math.isfinite(lo):
        # the interesting part: the step-0 loss (~5.5 = ln 256) would flatten the end of the curves
        ax.set_ylim(bottom=max(0.0, lo - 0.1), top=min(hi, lo + 2.5) + 0.05)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)

    print("| run | final val loss | at step | best val loss | train loss (last "
          f"{args.smooth} avg) | median ms/step | log |")
    print("|---|---|---|---|---|---|---|")
    for label, path, train, val in runs:
        fv = f"{val[-1][1]:.4f}" if val else "-"
        fs = str(val[-1][0]) if val else "-"
        best = f"{min(v for _, v in val):.4f}" if val else "-"
        tl = (f"{statistics.fmean(r['train_loss'] for r in train[-args.smooth:]):.4f}"
              if train else "-")
        ms = f"{statistics.median(r['ms'] for r in train):.1f}" if train else "-"
        print(f"| {label} | {fv} | {fs} | {best} | {tl} | {ms} | {path} |")
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
