#!/usr/bin/env python3
"""Draw the JSON written by examples/attention_map as a heat map: depth (rows) x position (columns),
with the text's characters on the position axis.

    python3 examples/tools/plot_attention_map.py out/attention_map.json [--out out/attention_map.png]

Needs matplotlib (Debian: python3-matplotlib)."""
import argparse
import json
import sys

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("plot_attention_map: matplotlib is missing (Debian: apt-get install python3-matplotlib)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="file written by examples/attention_map")
    ap.add_argument("--out", help="PNG (default: the JSON path with .png)")
    args = ap.parse_args()
    with open(args.json, encoding="utf-8") as f:
        d = json.load(f)
    mass = d["mass"]            # [T][|J|]
    depths = d["depths"]
    chars = [chr(t) if 32 <= t < 127 else "·" for t in d["tokens"]]
    grid = [[row[j] for row in mass] for j in range(len(depths))]  # [|J|][T]

    width = max(6.0, 0.16 * len(chars) + 1.5)
    fig, ax = plt.subplots(figsize=(width, 0.45 * len(depths) + 1.6))
    im = ax.imshow(grid, aspect="auto", origin="lower", cmap="viridis", vmin=0.0, vmax=1.0,
                   interpolation="nearest")
    ax.set_yticks(range(len(depths)))
    ax.set_yticklabels(["embeddings" if r == 0 else "depth %d" % r for r in depths])
    ax.set_xticks(range(len(chars)))
    ax.set_xticklabels(chars, fontsize=7, family="monospace")
    ax.tick_params(axis="x", length=0)
    ax.set_xlabel("position (the text, one byte per column)")
    ax.set_title("final-block attention by depth: %s" % d.get("plan", ""), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.025, pad=0.01, label="attention mass")
    fig.tight_layout()
    out = args.out or (args.json[:-5] if args.json.endswith(".json") else args.json) + ".png"
    fig.savefig(out, dpi=130)
    print("wrote %s" % out)


if __name__ == "__main__":
    main()
