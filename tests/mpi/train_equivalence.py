#!/usr/bin/env python3
"""The train example under mpirun against one process: the same command line, once as one process
and once as N ranks (per-rank batch B/N), must give the same training losses step by step and the
same validation losses within a tolerance (see the README's data-parallel section for why the two
differ at all: the order of float sums over the batch).

  train_equivalence.py --train build/examples/train --dir /tmp/x --ranks 2 \
      --mpiexec "mpiexec --oversubscribe --allow-run-as-root -n" -- <train flags>
"""
import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path


def run(cmd, log):
    print("+ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    print(out.stdout, flush=True)
    if out.returncode != 0:
        sys.exit(f"train_equivalence: the command failed with exit code {out.returncode}")
    train, val = {}, {}
    for line in Path(log).read_text().splitlines():
        entry = json.loads(line)
        if "train_loss" in entry:
            train[entry["step"]] = entry["train_loss"]
        if "val_loss" in entry:
            val[entry["step"]] = entry["val_loss"]
    return out.stdout, train, val


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--mpiexec", required=True, help="launcher and its flags, ending in -n/-np")
    ap.add_argument("--tolerance", type=float, default=1e-3)
    ap.add_argument("flags", nargs="*")
    a = ap.parse_args()
    d = Path(a.dir)
    d.mkdir(parents=True, exist_ok=True)
    common = [a.train, *a.flags, "--sample-tokens", "0"]
    _, train1, val1 = run(common + ["--log", str(d / "single.jsonl"),
                                    "--checkpoint", str(d / "single.safetensors")],
                          d / "single.jsonl")
    text, trainN, valN = run(shlex.split(a.mpiexec) + [str(a.ranks)] + common +
                             ["--log", str(d / "ranks.jsonl"),
                              "--checkpoint", str(d / "ranks.safetensors")],
                             d / "ranks.jsonl")
    if f"data parallel: {a.ranks} ranks (MPI)" not in text:
        sys.exit("train_equivalence: the MPI run does not report its rank count")
    if sorted(train1) != sorted(trainN) or sorted(val1) != sorted(valN) or not train1 or not val1:
        sys.exit("train_equivalence: the two runs logged different steps")
    dtrain = max(abs(train1[s] - trainN[s]) for s in train1)
    dval = max(abs(val1[s] - valN[s]) for s in val1)
    last = max(val1)
    print(f"{len(train1)} steps: max |training loss difference| {dtrain:.3g}, max |validation "
          f"loss difference| {dval:.3g} (final validation loss {val1[last]:.5f} vs "
          f"{valN[last]:.5f}), tolerance {a.tolerance:g}")
    if dtrain > a.tolerance or dval > a.tolerance:
        sys.exit("train_equivalence: FAILED: the losses differ by more than the tolerance")
    print("train_equivalence: ok")


if __name__ == "__main__":
    main()
