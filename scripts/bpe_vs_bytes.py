#!/usr/bin/env python3
"""Byte-level against BPE tokens at the same compute, on one corpus (by default the bundled Moby Dick).

Builds the examples (build/, SentencePiece and OpenBLAS on), then
  1. prepares the corpus twice with `prepare`: --tokenizer bytes, and a BPE vocabulary (--vocab-size);
     both split the text at the same byte, so both validate on the same text;
  2. trains the same model (the tiny default unless --model-flags says otherwise) on each, with the
     same steps, batch and sequence length, i.e. the same number of positions per step;
  3. reports tokens per byte, the validation loss in bits per byte (nats per token x tokens per
     byte / ln 2, the unit that compares across tokenizers), prepare's encode throughput (MB/s), the
     wall time and estimated training FLOPs of each run, and a plot.

    /usr/bin/python3 scripts/bpe_vs_bytes.py                    # the full comparison (2 x 2000 steps)
    /usr/bin/python3 scripts/bpe_vs_bytes.py --steps 300        # a quicker one
    /usr/bin/python3 scripts/bpe_vs_bytes.py --data notes.txt --vocab-size 8192

Writes <out>/results.md, <out>/results.json and <out>/bpe_vs_bytes.png (matplotlib, Debian package
python3-matplotlib; without it the plot is skipped).
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench", "compare"))
from machine import cpu_model, loadavg  # noqa: E402  (bench/compare/machine.py)


def run(cmd, capture=False, capture_stderr=False):
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    if capture:
        res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True,
                             stderr=subprocess.PIPE if capture_stderr else None)
        if res.returncode != 0:
            sys.exit(f"{cmd[0]} failed ({res.returncode}):\n{res.stderr or ''}")
        return (res.stdout, res.stderr) if capture_stderr else res.stdout
    subprocess.run(cmd, check=True)
    return None


def read_log(path):
    train, val = [], []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            (val if "val_loss" in r else train).append(r)
    return train, val


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(ROOT, "examples", "data", "moby_dick.txt"))
    p.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary (prepare's default)")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps of each run (train's default)")
    p.add_argument("--eval-interval", type=int, default=0, help="steps between validations; 0 = steps/10")
    p.add_argument("--threads", type=int, default=0, help="threads of prepare and train; 0 = all cores")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--model-flags", default="", help="extra train flags for both runs, e.g. '--width 192'")
    p.add_argument("--build", default=os.path.join(ROOT, "build"))
    p.add_argument("--out", default=os.path.join(ROOT, "out", "bpe_vs_bytes"))
    p.add_argument("--skip-build", action="store_true", help="use the programs already in --build")
    p.add_argument("--report-only", action="store_true",
                   help="only rewrite results.md and the plot from <out>/results.json")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.report_only:
        with open(os.path.join(a.out, "results.json")) as f:
            saved = json.load(f)
        args = argparse.Namespace(**saved["args"])
        args.out = a.out
        report(args, saved["runs"])
        return

    if not a.skip_build:
        run(["cmake", "-S", ROOT, "-B", a.build, "-DCMAKE_BUILD_TYPE=Release", "-DSTRATA_BUILD_EXAMPLES=ON",
             "-DSTRATA_NATIVE=ON", "-DSTRATA_USE_BLAS=ON", "-DSTRATA_USE_SENTENCEPIECE=ON"])
        run(["cmake", "--build", a.build, "-j", str(os.cpu_count() or 2), "--target", "prepare", "train"])
    prepare = os.path.join(a.build, "examples", "prepare")
    train = os.path.join(a.build, "examples", "train")

    runs = {}
    for name, tok_flags in (("bytes", ["--tokenizer", "bytes"]),
                            ("bpe", ["--tokenizer", "bpe", "--vocab-size", str(a.vocab_size)])):
        prefix = os.path.join(a.out, name)
        out = run([prepare, "--data", a.data, "--out", prefix, "--threads", str(a.threads)] + tok_flags,
                  capture=True)
        runs[name] = {"prepare": json.loads(out.strip().splitlines()[-1])}
    assert runs["bytes"]["prepare"]["val_bytes"] == runs["bpe"]["prepare"]["val_bytes"]

    eval_interval = a.eval_interval or max(1, a.steps // 10)
    for name, r in runs.items():
        prefix = os.path.join(a.out, name)
        log = prefix + ".jsonl"
        # --eval-batches large enough that every validation covers (nearly) all of the split.
        cmd = [train, "--tokens", prefix, "--steps", str(a.steps), "--eval-interval", str(eval_interval),
               "--eval-batches", "100000", "--seed", str(a.seed), "--threads", str(a.threads),
               "--checkpoint", prefix + ".safetensors", "--checkpoint-interval", "0", "--log", log,
               "--sample-tokens", "120", "--quiet",
               "--overwrite"] + a.model_flags.split()  # a rerun replaces this script's own outputs
        t0 = time.time()
        out, err = run(cmd, capture=True, capture_stderr=True)
        r["seconds"] = time.time() - t0
        sys.stderr.write(err)
        head = re.search(r"strata train: (\d+) parameters \| L\d+ H\d+ C\d+ T(\d+) V\d+ \| batch (\d+)", err)
        r["parameters"], T, B = (int(g) for g in head.groups())
        r["positions_per_step"] = B * T
        # 6 FLOPs per parameter and position (forward + backward), the V x C tables included.
        r["train_flops"] = 6.0 * r["parameters"] * B * T * a.steps
        r["sample"] = out.split("----\n", 1)[-1].strip()
        steps, vals = read_log(log)
        prep = r["prepare"]
        val_tpb = prep["val_tokens"] / prep["val_bytes"]  # validation tokens per byte
        r["val_tokens_per_byte"] = val_tpb
        r["curve"] = [(v["step"], v["val_loss"] * val_tpb / math.log(2)) for v in vals]
        r["bits_per_byte"] = r["curve"][-1][1]
        r["val_loss_nats_per_token"] = vals[-1]["val_loss"]
        r["tokens_per_s"] = sorted(s["tokens_per_s"] for s in steps)[len(steps) // 2]
        r["cmd"] = " ".join(os.path.relpath(c, ROOT) if c.startswith(ROOT) else c for c in cmd)

    # Positions per step are the same; parameters (and so FLOPs) differ by the V x C tables.
    runs["machine"] = {"cpu": cpu_model(), "cpus": os.cpu_count(), "load_average_after": loadavg(),
                       "date": time.strftime("%Y-%m-%d")}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump({"args": vars(a), "runs": runs}, f, indent=1)
    report(a, runs)


def report(a, runs):
    """Writes <out>/results.md and <out>/bpe_vs_bytes.png."""
    b, s = runs["bytes"], runs["bpe"]
    lines = [
        f"# Bytes against BPE at the same compute ({os.path.basename(a.data)}, {a.steps} steps)",
        "",
        f"Both runs: the same model flags (`{a.model_flags or 'the tiny defaults'}`), {a.steps} steps, "
        "the same batch and sequence length (so the same positions per step), seed "
        f"{a.seed}. Validation text: the last {b['prepare']['val_bytes']} bytes of the corpus, the same "
        "for both.",
        "",
    ]
    if "machine" in runs:
        m = runs["machine"]
        lines += [f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['date']}; load average right after the "
                  f"runs {m['load_average_after']}. Rerun: `/usr/bin/python3 scripts/bpe_vs_bytes.py"
                  f"{' --steps %d' % a.steps if a.steps != 2000 else ''}`.", ""]
    lines += [
        "| tokenizer | vocabulary | tokens per byte (whole corpus) | validation bits per byte | "
        "validation nats per token | parameters | training FLOPs (6 N x positions) | median tokens/s | "
        "wall time | prepare encode MB/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in (("bytes", b), ("BPE (SentencePiece, byte fallback)", s)):
        prep = r["prepare"]
        lines.append(f"| {name} | {prep['vocab_size']} | {prep['tokens_per_byte']:.4f} | "
                     f"**{r['bits_per_byte']:.4f}** | {r['val_loss_nats_per_token']:.4f} | "
                     f"{r['parameters']} | {r['train_flops']:.2e} | "
                     f"{r['tokens_per_s']:.0f} | {r['seconds']:.0f} s | "
                     f"{prep['encode_mb_per_s']:.2f} ({prep['threads']} threads) |")
    lines += ["", "Validation bits per byte by step:", "", "| step | bytes | BPE |", "|---|---|---|"]
    for (st, vb), (_, vs) in zip(b["curve"], s["curve"]):
        lines.append(f"| {st} | {vb:.4f} | {vs:.4f} |")
    lines += ["", "Samples (prompt \"Call me \"):", "", "bytes:", "```", b["sample"], "```", "BPE:", "```",
              s["sample"], "```", "", "Commands:", "```"] + [r["cmd"] for r in (b, s)] + ["```", ""]
    with open(os.path.join(a.out, "results.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not found (Debian: python3-matplotlib): no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, r, color in (("bytes (V 256)", b, "tab:blue"),
                           (f"BPE (V {s['prepare']['vocab_size']})", s, "tab:orange")):
        steps = [c[0] for c in r["curve"]]
        bpb = [c[1] for c in r["curve"]]
        axes[0].plot(steps, bpb, "o-", color=color, label=name)
        # training text seen: positions / tokens per byte of the training split
        tpb = r["prepare"]["train_tokens"] / r["prepare"]["train_bytes"]
        axes[1].plot([st * r["positions_per_step"] / tpb / 1e6 for st in steps], bpb, "o-", color=color,
                     label=name)
    axes[0].set_xlabel("optimizer step (the same positions per step)")
    axes[1].set_xlabel("training text seen (MB)")
    for ax in axes:
        ax.set_ylabel("validation bits per byte")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"bytes vs BPE, same model and compute ({os.path.basename(a.data)})")
    fig.tight_layout()
    png = os.path.join(a.out, "bpe_vs_bytes.png")
    fig.savefig(png, dpi=110)
    print(f"plot: {png}", file=sys.stderr)


if __name__ == "__main__":
    main()
