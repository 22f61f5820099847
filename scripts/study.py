#!/usr/bin/python3
"""study.py: the variant study. Trains every attention arm with the same seeds, data order and budget
at two context lengths, and writes every curve, a summary table and the plots.

    /usr/bin/python3 scripts/study.py                  # 5 arms x 3 seeds x 2 contexts x 1000 steps, ~1 h
    /usr/bin/python3 scripts/study.py --quick          # the same pipeline in a few minutes
    /usr/bin/python3 scripts/study.py --dry-run        # what would run, and the predicted time
    /usr/bin/python3 scripts/study.py --data FILE.txt  # any UTF-8 text file
    /usr/bin/python3 scripts/study.py --report-only    # tables and plots from the runs already done

Arms (each a `train` example run with --threads 1; `--jobs` of them side by side):
  standard      --attention standard
  sla-split     --attention skip                      (d = round(3L/4), n = round(3NH/4), split)
  sla-concat    --attention skip --skip-mode concat
  shortcut      --attention shortcut                  (all depths 1..L-1, Cf = C)
  standard-L+1  --attention standard --layers L+1     (a bigger standard model, for scale)

Every run gets the same --seed per seed, so within a seed all arms see the same batches. Finished
runs are kept: running the same command again skips them and continues an interrupted study (a run
is finished when its log has the final validation line; logs are written under a temporary name
and renamed on success). Outputs under --out: runs/T<T>_B<B>/<arm>_s<seed>.{jsonl,json,stderr.txt}
(train log, run record, train's messages), study.json, results.md, curves.png, attention_map.{json,
txt,png}. See docs/results/study/README.md.
"""
import argparse
import datetime
import hashlib
import json
import math
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT / "examples" / "data" / "moby_dick.txt"
PROG = "study"

# name, extra train flags (besides the base model), layer offset, one-line description
ARMS = [
    ("standard", ["--attention", "standard"], 0, "standard causal attention"),
    ("sla-split", ["--attention", "skip", "--skip-mode", "split"], 0,
     "skip-layer attention, split mode, default d = round(3L/4), n = round(3NH/4)"),
    ("sla-concat", ["--attention", "skip", "--skip-mode", "concat"], 0,
     "skip-layer attention, concat mode (own + earlier layer's keys), same d, n"),
    ("shortcut", ["--attention", "shortcut"], 0,
     "attention shortcuts of the final layer over all depths 1..L-1, Cf = C"),
    ("standard-L+1", ["--attention", "standard"], 1, "standard attention with one more layer"),
]
ARM_NAMES = [a[0] for a in ARMS]
MAP_ARM = "shortcut"

# Cost model for the ETA before any run has finished: ms per step of the tiny model (L4 H4 C128),
# T=128 B=16, 1 thread, measured on the 2-vCPU AMD EPYC of docs/results (162-190 ms; T=512 B=4
# about 1.3x that). Once runs progress, the ETA is rescaled by measured times.
REF_MS = 175.0
PARALLEL = 1.05  # two 1-thread runs side by side: each 3-6% slower than alone (measured)
ARM_COST = {"standard": 1.0, "sla-split": 0.98, "sla-concat": 1.03, "shortcut": 1.25,
            "standard-L+1": 1.24}

QUICK = {"steps": 60, "seeds": "1,2", "eval_interval": 20, "eval_batches": 4}
FULL = {"steps": 1000, "seeds": "1,2,3", "eval_interval": None, "eval_batches": 20}


class StudyError(Exception):
    pass


def die(msg):
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    sys.exit(1)


def say(msg=""):
    try:
        print(msg, flush=True)
    except BrokenPipeError:  # e.g. piped into head: carry on without output
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def fmt_duration(seconds):
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s // 60) % 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


# ---------------------------------------------------------------------------------------------
# command line

def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="study.py",
        description="Variant study: trains every attention arm with the same seeds, data and budget "
                    "at several context lengths and reports validation losses, speed and curves.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="arms: " + ", ".join(ARM_NAMES) + "\nSee docs/results/study/README.md.")
    p.add_argument("--build-dir", default=None,
                   help="CMake build directory holding examples/train and examples/attention_map; "
                        "configured and built if they are missing (default: build in the source tree)")
    p.add_argument("--build", action="store_true",
                   help="run 'cmake --build' for the two targets even if they exist (brings them up "
                        "to date with the sources)")
    p.add_argument("--out", default=None,
                   help="output folder (default: out/study in the source tree; with --quick: "
                        "out/study-quick)")
    p.add_argument("--models-dir", default=None,
                   help="where kept checkpoints go (default: OUT/models)")
    p.add_argument("--data", default=str(DEFAULT_DATA),
                   help="UTF-8 text file to train on (default: the bundled Moby Dick)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="fraction of the file (its end) kept for validation (default: 0.1)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: 1,2,3; quick: 1,2)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimizer steps per run (default: {FULL['steps']}; quick: {QUICK['steps']})")
    p.add_argument("--warmup", type=int, default=None,
                   help="linear warm-up steps (default: 5%% of --steps)")
    p.add_argument("--eval-interval", type=int, default=None,
                   help="steps between validation runs (default: --steps/10; quick: 20)")
    p.add_argument("--eval-batches", type=int, default=None,
                   help="batches per validation run (default: 20; quick: 4)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default: 1e-3)")
    p.add_argument("--min-lr", type=float, default=1e-4, help="final learning rate (default: 1e-4)")
    p.add_argument("--contexts", default="128x16,512x4",
                   help="comma-separated TxB pairs: context length x batch (default: 128x16,512x4, "
                        "the same 2048 tokens per step)")
    p.add_argument("--arms", default=",".join(ARM_NAMES),
                   help="comma-separated subset of: " + ", ".join(ARM_NAMES) + " (default: all)")
    p.add_argument("--layers", type=int, default=4, help="layers L of the base model (default: 4)")
    p.add_argument("--heads", type=int, default=4, help="heads per layer (default: 4)")
    p.add_argument("--width", type=int, default=128, help="model width C (default: 128)")
    p.add_argument("--jobs", type=int, default=2,
                   help="train processes side by side, each with --threads 1 (default: 2)")
    p.add_argument("--quick", action="store_true",
                   help=f"a few minutes: {QUICK['steps']} steps, seeds {QUICK['seeds']}, all arms "
                        "and contexts (explicit flags still win)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every run's final checkpoint in --models-dir (default: only the model "
                        "of the attention map)")
    p.add_argument("--overwrite", action="store_true",
                   help="let runs still to do replace checkpoints of the same name that already "
                        "exist in --models-dir (default: refuse before training, as train does)")
    p.add_argument("--map-text", default=None,
                   help="text for the shortcut attention map (default: the book's first sentence for "
                        "the bundled corpus, else a line of the validation split)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the runs still to do, their train commands and the predicted time; "
                        "train nothing")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write study.json, results.md and the plots from finished runs")
    a = p.parse_args(argv)

    mode = QUICK if a.quick else FULL
    # defaults live in the source tree wherever the study is started from (as scripts/train.sh);
    # paths given on the command line are relative to the current directory
    if a.out is None:
        a.out = str(ROOT / ("out/study-quick" if a.quick else "out/study"))
    if a.build_dir is None:
        a.build_dir = str(ROOT / "build")
    if a.steps is None:
        a.steps = mode["steps"]
    if a.seeds is None:
        a.seeds = mode["seeds"]
    if a.eval_batches is None:
        a.eval_batches = mode["eval_batches"]
    if a.eval_interval is None:
        a.eval_interval = mode["eval_interval"] or max(1, a.steps // 10)
    if a.warmup is None:
        a.warmup = int(round(0.05 * a.steps))

    def bad(msg):
        p.error(msg)

    for name in ("steps", "eval_interval", "eval_batches", "jobs", "layers", "heads", "width"):
        if getattr(a, name) < 1:
            bad(f"--{name.replace('_', '-')}: {getattr(a, name)} is below the minimum 1")
    if a.warmup < 0:
        bad(f"--warmup: {a.warmup} is below the minimum 0")
    if not (0.001 <= a.val_fraction <= 0.5):
        bad(f"--val-fraction: {a.val_fraction} is outside [0.001, 0.5]")
    if not (a.lr > 0):
        bad(f"--lr: {a.lr} is not positive")
    if not (0 <= a.min_lr <= a.lr):
        bad(f"--min-lr: {a.min_lr}, expected in [0, --lr = {a.lr}]")
    if a.width % a.heads:
        bad(f"--width {a.width} is not divisible by --heads {a.heads}")

    try:
        a.seed_list = [int(s) for s in a.seeds.split(",") if s.strip() != ""]
    except ValueError:
        bad(f"--seeds: '{a.seeds}' is not a comma-separated list of integers, e.g. 1,2,3")
    if not a.seed_list or any(s < 0 for s in a.seed_list):
        bad(f"--seeds: '{a.seeds}': expected non-negative integers, e.g. 1,2,3")
    if len(set(a.seed_list)) != len(a.seed_list):
        bad(f"--seeds: '{a.seeds}' repeats a seed")

    a.context_list = []
    for item in a.contexts.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", item)
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            bad(f"--contexts: '{item}' is not TxB with T, B >= 1 (e.g. 128x16,512x4)")
        a.context_list.append((int(m.group(1)), int(m.group(2))))
    if len(set(t for t, _ in a.context_list)) != len(a.context_list):
        bad(f"--contexts: '{a.contexts}' lists a context length twice")

    arms = [s.strip() for s in a.arms.split(",") if s.strip()]
    unknown = [s for s in arms if s not in ARM_NAMES]
    if unknown or not arms:
        bad(f"--arms: unknown arm(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(ARM_NAMES)}")
    if len(set(arms)) != len(arms):
        bad(f"--arms: '{a.arms}' repeats an arm")
    a.arm_list = [n for n in ARM_NAMES if n in arms]  # canonical order
    return a


# ---------------------------------------------------------------------------------------------
# environment: build, data, machine

def build_examples(build_dir, force):
    train = build_dir / "examples" / "train"
    amap = build_dir / "examples" / "attention_map"
    if not force and os.access(train, os.X_OK) and os.access(amap, os.X_OK):
        return train, amap
    jobs = str(os.cpu_count() or 2)
    if not (build_dir / "CMakeCache.txt").exists():
        cmd = ["cmake", "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
               "-DSTRATA_BUILD_EXAMPLES=ON", "-DSTRATA_NATIVE=ON", "-DSTRATA_USE_BLAS=ON"]
        say("+ " + shlex.join(cmd))
        try:
            r = subprocess.run(cmd)
        except FileNotFoundError:
            raise StudyError("cmake not found; run scripts/setup.sh first")
        if r.returncode != 0:
            raise StudyError("configuring failed (missing packages? run scripts/setup.sh)")
    cmd = ["cmake", "--build", str(build_dir), "-j", jobs, "--target", "train", "attention_map"]
    say("+ " + shlex.join(cmd))
    try:
        r = subprocess.run(cmd)
    except FileNotFoundError:
        raise StudyError("cmake not found; run scripts/setup.sh first")
    if r.returncode != 0:
        raise StudyError(f"building train and attention_map in {build_dir} failed (is it configured "
                         "with -DSTRATA_BUILD_EXAMPLES=ON?)")
    for exe in (train, amap):
        if not os.access(exe, os.X_OK):
            raise StudyError(f"{exe} was not built (is {build_dir} configured with "
                             "-DSTRATA_BUILD_EXAMPLES=ON?)")
    return train, amap


def check_data(path, val_fraction, contexts, eval_batches):
    """Validates the corpus the way train will split it; returns (bytes, sha256, notes)."""
    if not path.exists():
        raise StudyError(f"--data {path}: no such file")
    if not path.is_file():
        raise StudyError(f"--data {path}: not a regular file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise StudyError(f"--data {path}: cannot read it ({e.strerror})")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise StudyError(f"--data {path}: not UTF-8 text: byte {e.start} (line {line}) is "
                         f"0x{raw[e.start]:02x} ({e.reason}); convert it first, e.g. "
                         f"iconv -f latin1 -t utf-8 {shlex.quote(str(path))} > corpus.txt")
    n = len(raw)
    n_val = int(n * val_fraction)  # as strata::TextDataset: the last n_val bytes validate
    t_max = max(t for t, _ in contexts)
    if n_val < t_max + 1 or n - n_val < t_max + 1:
        raise StudyError(
            f"--data {path}: {n} bytes is too small: with --val-fraction {val_fraction} the "
            f"validation split has {n_val} bytes and the training split {n - n_val}, and both need "
            f"at least {t_max + 1} (the largest context {t_max} + 1); use a larger file (at least "
            f"{math.ceil((t_max + 1) / val_fraction)} bytes), a larger --val-fraction or smaller "
            f"--contexts")
    notes = []
    for t, b in contexts:
        windows = (n_val - 1) // t
        if windows < b * eval_batches:
            notes.append(f"validation at T={t} uses {windows} windows of {t} bytes (the split is "
                         f"{n_val} bytes), fewer than --eval-batches {eval_batches} x batch {b} = "
                         f"{b * eval_batches}: validation losses will be noisier")
    if n - n_val < 20 * t_max:
        notes.append(f"the training split is only {n - n_val} bytes: expect overfitting")
    return n, hashlib.sha256(raw).hexdigest(), notes


def machine_info():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    commit = "unknown"
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True).stdout
        if dirty.strip():
            commit += " (with uncommitted changes)"
    except (OSError, subprocess.CalledProcessError):
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "git_commit": commit,
            "python": sys.version.split()[0], "platform": sys.platform}


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# runs

class Run:
    def __init__(self, study, T, B, arm, seed):
        self.study, self.T, self.B, self.arm, self.seed = study, T, B, arm, seed
        self.dir = study.out / "runs" / f"T{T}_B{B}"
        base = f"{arm}_s{seed}"
        self.log = self.dir / f"{base}.jsonl"
        self.meta = self.dir / f"{base}.json"
        self.err = self.dir / f"{base}.stderr.txt"
        self.log_part = self.dir / f"{base}.jsonl.part"
        self.err_part = self.dir / f"{base}.stderr.txt.part"
        self.ckpt = study.models_dir / f"{arm}_T{T}_B{B}_s{seed}.safetensors"
        # a kept checkpoint is written next to its final name (the models folder may be on
        # another file system); the others stay in the run's folder until deleted
        self.ckpt_kept_part = self.ckpt.with_name(self.ckpt.name + ".part")
        self.ckpt_tmp_part = self.dir / f"{base}.safetensors.part"
        self.name = f"T={T} B={B} {arm} seed {seed}"
        self.proc = None
        self.started = None
        self.progress = 0

    @property
    def layers(self):
        return self.study.args.layers + dict((a[0], a[2]) for a in ARMS)[self.arm]

    def settings(self):
        """Everything that decides this run's numbers (compared when a study continues)."""
        a = self.study.args
        flags = dict((x[0], x[1]) for x in ARMS)[self.arm]
        return ["--layers", str(self.layers), "--heads", str(a.heads), "--width", str(a.width),
                "--context", str(self.T), "--batch", str(self.B), *flags,
                "--steps", str(a.steps), "--warmup", str(a.warmup), "--lr", repr(a.lr),
                "--min-lr", repr(a.min_lr), "--eval-interval", str(a.eval_interval),
                "--eval-batches", str(a.eval_batches), "--seed", str(self.seed),
                "--val-fraction", repr(a.val_fraction)]

    def command(self):
        s = self.study
        return [str(s.train), *self.settings(), "--threads", "1", "--data", str(s.data),
                "--log", str(self.log_part), "--checkpoint", str(self.ckpt_part),
                "--checkpoint-interval", "0", "--sample-tokens", "0"]

    def needs_checkpoint(self):
        return self.study.args.keep_checkpoints or self is self.study.map_run

    @property
    def ckpt_part(self):
        return self.ckpt_kept_part if self.needs_checkpoint() else self.ckpt_tmp_part

    def status(self):
        """'done', 'todo', or raises StudyError when the folder holds a run with other settings."""
        if not (self.log.exists() and self.meta.exists()):
            return "todo"
        try:
            meta = json.loads(self.meta.read_text())
        except (OSError, ValueError):
            return "todo"
        if meta.get("settings") != self.settings() or meta.get("data_sha256") != self.study.data_sha:
            diff = describe_difference(meta.get("settings", []), self.settings())
            if meta.get("data_sha256") != self.study.data_sha:
                diff.append(f"data {meta.get('data', '?')} instead of {self.study.data}")
            raise StudyError(
                f"{self.log} was made with other settings ({'; '.join(diff) or 'unknown'}); choose "
                f"another --out, or delete {self.dir.parent} to start over")
        val = read_log(self.log)[1]
        if not val or val[-1][0] != self.study.args.steps:
            return "todo"
        if self is self.study.map_run and not self.ckpt.exists():
            return "todo"  # the attention map needs this model
        return "done"

    def clean_parts(self):
        for p in (self.log_part, self.err_part, self.ckpt_kept_part, self.ckpt_tmp_part):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def start(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_part.parent.mkdir(parents=True, exist_ok=True)
        self.clean_parts()
        errf = open(self.err_part, "w")
        # one thread per run, whatever does the products (Eigen/OpenMP or a BLAS library)
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.cmd = self.command()
        errf.write("+ " + shlex.join(self.cmd) + "\n")
        errf.flush()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=errf, stderr=errf,
                                     env=env, cwd=str(ROOT))
        errf.close()
        self.started = time.monotonic()
        self.progress = 0

    def poll_progress(self):
        try:
            text = self.err_part.read_text(errors="replace")
        except OSError:
            return self.progress
        steps = [int(m) for m in re.findall(r"^step\s+(\d+)[/ ]", text, re.M)]
        if steps:
            self.progress = max(self.progress, max(steps))
        return self.progress

    def stderr_tail(self, n=15):
        for p in (self.err_part, self.err):
            try:
                lines = p.read_text(errors="replace").rstrip("\n").splitlines()
                # the first line is the command (start() writes it), which comes first in full
                return "\n".join("    " + line for line in lines[:1] + lines[1:][-n:])
            except OSError:
                continue
        return "    (no output)"

    def finish(self):
        """After exit 0: checks the log, records the run, renames its files. Returns the record."""
        s = self.study
        wall = time.monotonic() - self.started
        train_rows, val = read_log(self.log_part)
        if not val or val[-1][0] != s.args.steps:
            raise StudyError(f"run {self.name}: train exited normally but its log {self.log_part} "
                             f"has no validation loss at step {s.args.steps}")
        text = self.err_part.read_text(errors="replace")
        m = re.search(r"strata train: (\d+) parameters", text)
        if not m:
            raise StudyError(f"run {self.name}: no parameter count in train's output "
                             f"{self.err_part}")
        m_plan = re.search(r"\| attention (.*)$", text, re.M)
        m_products = re.search(r"^\s*products: (.*)$", text, re.M)  # newer train reports it
        tps = [r["tokens_per_s"] for r in train_rows if "tokens_per_s" in r]
        record = {
            "name": self.name, "T": self.T, "B": self.B, "arm": self.arm, "seed": self.seed,
            "settings": self.settings(), "command": shlex.join(self.cmd),
            "data": str(s.data), "data_sha256": s.data_sha,
            "parameters": int(m.group(1)), "plan": m_plan.group(1).strip() if m_plan else None,
            "products": m_products.group(1).strip() if m_products else None,
            "final_val_loss": val[-1][1], "tokens_per_s_median": statistics.median(tps) if tps else None,
            "wall_seconds": round(wall, 2), "threads": 1, "jobs": s.args.jobs,
            "train_sha256": s.train_sha, "study_command": s.command_line(),
            "finished": now_iso(), **s.machine,
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.needs_checkpoint():
            if self.ckpt.exists() and not s.args.overwrite:  # appeared while this run trained
                raise StudyError(f"run {self.name}: {self.ckpt} exists and would be replaced; the "
                                 f"new checkpoint stays in {self.ckpt_part} (pass --overwrite to "
                                 "replace)")
            os.replace(self.ckpt_part, self.ckpt)
        else:
            self.ckpt_part.unlink(missing_ok=True)
        meta_part = self.meta.with_suffix(".json.part")
        meta_part.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(self.err_part, self.err)
        os.replace(meta_part, self.meta)
        os.replace(self.log_part, self.log)  # last: a log without .part means the run is complete
        return record

    def predicted_seconds(self):
        a = self.study.args
        scale = (a.width / 128.0) ** 2 * (a.layers / 4.0)  # rough; rescaled by measured times
        step_ms = REF_MS * (self.T * self.B / 2048.0) * (0.9 + 0.1 * self.T / 128.0) \
            * ARM_COST[self.arm] * scale
        evals = a.steps // a.eval_interval + 1 + (1 if a.steps % a.eval_interval else 0)
        eval_ms = evals * a.eval_batches * step_ms / 3.0
        return (a.steps * step_ms + eval_ms) / 1000.0 + 0.5


def describe_difference(old, new):
    def pairs(lst):
        d, i = {}, 0
        while i < len(lst):
            if i + 1 < len(lst) and not str(lst[i + 1]).startswith("--"):
                d[lst[i]] = lst[i + 1]
                i += 2
            else:
                d[lst[i]] = ""
                i += 1
        return d
    o, n = pairs(old), pairs(new)
    out = []
    for k in sorted(set(o) | set(n)):
        if o.get(k) != n.get(k):
            out.append(f"{k} {o.get(k, '(unset)')} instead of {n.get(k, '(unset)')}")
    return out


def read_log(path):
    """(training rows, [(step, val_loss)]) of a train JSON-lines log; the last record of a step wins."""
    train, val = {}, {}
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    r = json.loads(line)
                except ValueError:
                    continue  # a line cut off by an interruption
                if "val_loss" in r:
                    val[r["step"]] = r["val_loss"]
                elif "train_loss" in r:
                    train[r["step"]] = r
    except OSError:
        return [], []
    return [train[k] for k in sorted(train)], sorted(val.items())


def now_iso():
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# the study

class Interrupted(Exception):
    pass


def on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


class Study:
    def __init__(self, args, argv):
        self.args = args
        self.argv = argv
        cwd = Path.cwd()
        self.out = (cwd / args.out).resolve()
        self.models_dir = (cwd / args.models_dir).resolve() if args.models_dir else self.out / "models"
        self.build_dir = (cwd / args.build_dir).resolve()
        self.data = (cwd / args.data).resolve()
        self.machine = machine_info()
        self.train = self.amap = None
        self.train_sha = None
        self.data_sha = None
        self.runs = []
        self.map_run = None

    def command_line(self):
        script = Path(sys.argv[0])
        try:
            shown = str(script.resolve().relative_to(Path.cwd()))
        except ValueError:
            shown = str(script)
        argv = [x for x in self.argv if x not in ("--report-only", "--build")]  # not the study's
        cmd = shlex.join(["/usr/bin/python3" if sys.executable == "/usr/bin/python3" else "python3",
                          shown, *argv])
        cwd = Path.cwd()
        if cwd != ROOT:
            cmd = f"(cd {shlex.quote(str(cwd))} && {cmd})"
        return cmd

    def plan_runs(self):
        a = self.args
        # Seed-major order: an interrupted study has whole seeds; within a seed the costlier
        # context first, so the cheap runs fill the cores at the end.
        contexts = sorted(a.context_list, key=lambda tb: -tb[0])
        for seed in a.seed_list:
            for T, B in contexts:
                for arm in a.arm_list:
                    self.runs.append(Run(self, T, B, arm, seed))
        if MAP_ARM in a.arm_list:
            # the shortcut model of the attention map: seed 1 (else the first seed), T=128 if
            # studied, else the shortest context
            seed = 1 if 1 in a.seed_list else a.seed_list[0]
            T = 128 if any(t == 128 for t, _ in a.context_list) else min(t for t, _ in a.context_list)
            self.map_run = next(r for r in self.runs
                                if r.arm == MAP_ARM and r.seed == seed and r.T == T)
        # The map model goes first, so the map exists as early as possible.
        if self.map_run:
            self.runs.remove(self.map_run)
            self.runs.insert(0, self.map_run)

    def main(self):
        a = self.args
        self.n_bytes, self.data_sha, notes = check_data(self.data, a.val_fraction, a.context_list,
                                                        a.eval_batches)
        self.plan_runs()
        status = {r: r.status() for r in self.runs}
        todo = [r for r in self.runs if status[r] == "todo"]
        if not (a.report_only or a.dry_run):
            self.check_no_clobber(todo)  # before building or training anything
            self.train, self.amap = build_examples(self.build_dir, a.build)
        else:
            self.train = self.build_dir / "examples" / "train"
            self.amap = self.build_dir / "examples" / "attention_map"
        if self.train.exists():
            self.train_sha = file_sha256(self.train)

        tokens = sorted({t * b for t, b in a.context_list})
        say(f"study: {len(a.arm_list)} arms x {len(a.seed_list)} seeds x {len(a.context_list)} "
            f"contexts = {len(self.runs)} runs of {a.steps} steps (warm-up {a.warmup}, validation "
            f"every {a.eval_interval} steps on {a.eval_batches} batches)")
        say(f"  arms: {', '.join(a.arm_list)}; seeds: {','.join(map(str, a.seed_list))}; contexts: "
            + ", ".join(f"T={t} B={b}" for t, b in a.context_list))
        say(f"  data: {self.data} ({self.n_bytes:,} bytes, sha256 {self.data_sha[:12]}...)")
        say(f"  out: {self.out}")
        say(f"  machine: {self.machine['cpu']}, {self.machine['cpus']} CPUs; commit "
            f"{self.machine['git_commit']}")
        if len(tokens) > 1:
            say(f"  warning: the contexts differ in tokens per step ({', '.join(map(str, tokens))})")
        if a.jobs > (os.cpu_count() or 1):
            say(f"  warning: --jobs {a.jobs} is more than the {os.cpu_count()} CPUs")
        for n in notes:
            say(f"  warning: {n}")

        if a.dry_run:
            predicted = sum(r.predicted_seconds() for r in todo) * PARALLEL / a.jobs
            say(f"  --dry-run: {len(self.runs) - len(todo)} of {len(self.runs)} runs finished; "
                f"{len(todo)} to do, predicted about {fmt_duration(predicted)} with {a.jobs} "
                f"parallel jobs")
            for r in todo:
                say(f"  {r.name} (~{fmt_duration(r.predicted_seconds())} alone): "
                    + shlex.join(r.command()))
            return
        if a.report_only:
            say(f"  --report-only: {len(self.runs) - len(todo)} of {len(self.runs)} runs finished")
        elif todo:
            done = len(self.runs) - len(todo)
            if done:
                say(f"  {done} runs already finished in {self.out}: continuing with the other "
                    f"{len(todo)}")
            predicted = sum(r.predicted_seconds() for r in todo) * PARALLEL / a.jobs
            say(f"  predicted: about {fmt_duration(predicted)} with {a.jobs} parallel jobs (from a "
                f"reference of {REF_MS:.0f} ms per step; rescaled by measured times as runs go)")
            say()
            self.execute(todo)
        else:
            say("  every run is finished already: writing the report")
        self.report()

    def check_no_clobber(self, todo):
        """A trained checkpoint is never replaced by accident (the rule train follows): runs to do
        whose kept checkpoint already exists stop the study before any training."""
        taken = [r.ckpt for r in todo if r.needs_checkpoint() and r.ckpt.exists()]
        if taken and not self.args.overwrite:
            more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
            raise StudyError(
                f"{taken[0]}{more} already exist(s) and would be replaced by runs still to do; move "
                f"them away, choose another --models-dir, or pass --overwrite to replace them")

    # -- running -------------------------------------------------------------------------------
    def execute(self, todo):
        a = self.args
        pending = list(todo)
        running = []
        finished = []          # (run, wall seconds)
        total = len(todo)
        t0 = time.monotonic()
        last_status = t0
        status_every = max(15.0, min(60.0, sum(r.predicted_seconds() for r in todo) / a.jobs / 40))
        failure = None
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
        try:
            while pending or running:
                while pending and len(running) < a.jobs and failure is None:
                    r = pending.pop(0)
                    r.start()
                    running.append(r)
                    say(f"[{fmt_duration(time.monotonic() - t0)}] start {len(finished) + len(running)}"
                        f"/{total}: {r.name}")
                time.sleep(0.5)
                for r in list(running):
                    rc = r.proc.poll()
                    if rc is None:
                        continue
                    running.remove(r)
                    if rc == 0:
                        try:
                            rec = r.finish()
                        except StudyError as e:
                            failure = failure or str(e)
                            say(f"{PROG}: error: {e}")
                            continue
                        finished.append((r, rec["wall_seconds"]))
                        say(f"[{fmt_duration(time.monotonic() - t0)}] done {len(finished)}/{total}: "
                            f"{r.name}: validation loss {rec['final_val_loss']:.4f} at step "
                            f"{a.steps} | {rec['parameters']:,} parameters | "
                            f"{rec['tokens_per_s_median']:,.0f} tokens/s | "
                            f"{fmt_duration(rec['wall_seconds'])}")
                    elif rc in (130, -signal.SIGINT, -signal.SIGTERM):
                        r.clean_parts()  # a partial run is redone next time
                        raise Interrupted(f"run {r.name} was interrupted (exit {rc})")
                    else:
                        say(f"{PROG}: error: run {r.name} failed (exit {rc}); the end of its "
                            f"output ({r.err_part}):\n{r.stderr_tail()}")
                        failure = failure or f"run {r.name} failed (exit {rc}; its output is above)"
                        if pending:
                            say(f"{PROG}: starting no more runs" +
                                (f"; waiting for the {len(running)} still running" if running else ""))
                if failure and not running:
                    break
                now = time.monotonic()
                if now - last_status >= status_every and running:
                    last_status = now
                    self.print_status(t0, pending, running, finished)
        except BaseException as e:
            if not isinstance(e, (KeyboardInterrupt, Interrupted)):
                self.stop(running, f"internal error ({type(e).__name__})")
                raise
            self.stop(running, str(e) if isinstance(e, Interrupted) else "Ctrl-C")
            done = sum(1 for r in self.runs if r.log.exists())
            say(f"{PROG}: stopped. {done} of {len(self.runs)} runs are finished and kept in "
                f"{self.out}; run the same command again to continue")
            sys.exit(130)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        if failure:
            raise StudyError(failure + "; finished runs are kept: run the same command again to "
                             "continue")
        say(f"[{fmt_duration(time.monotonic() - t0)}] all {total} runs finished")

    def print_status(self, t0, pending, running, finished):
        elapsed = time.monotonic() - t0
        # measured / predicted over finished and running runs rescales the prediction
        actual = sum(w for _, w in finished)
        predicted = sum(r.predicted_seconds() for r, _ in finished)
        for r in running:
            frac = r.poll_progress() / self.args.steps
            if frac > 0.02:
                actual += time.monotonic() - r.started
                predicted += r.predicted_seconds() * frac
        factor = actual / predicted if predicted > 0 else PARALLEL
        remaining = sum(r.predicted_seconds() for r in pending)
        remaining += sum(r.predicted_seconds() * (1 - r.progress / self.args.steps) for r in running)
        eta = remaining * factor / self.args.jobs
        parts = ", ".join(f"{r.arm} T{r.T} s{r.seed} {r.progress}/{self.args.steps}" for r in running)
        say(f"[{fmt_duration(elapsed)}] {len(finished)} finished, {len(running)} running ({parts}), "
            f"{len(pending)} waiting | ETA {fmt_duration(eta)}")

    def stop(self, running, why):
        say(f"\n{PROG}: {why}: stopping {len(running)} running train process(es)...")
        for r in running:
            if r.proc.poll() is None:
                try:
                    r.proc.send_signal(signal.SIGTERM)  # train stops after its current step
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 20
        try:
            for r in running:
                while r.proc.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.1)
        except (KeyboardInterrupt, Interrupted):
            pass
        for r in running:
            if r.proc.poll() is None:
                r.proc.kill()
                r.proc.wait()
            r.clean_parts()  # a partial run is redone next time

    # -- reporting -----------------------------------------------------------------------------
    def collect(self):
        a = self.args
        results = []
        for T, B in a.context_list:
            ctx = {"T": T, "B": B, "tokens_per_step": T * B, "arms": {}}
            for arm in a.arm_list:
                runs = [r for r in self.runs if r.T == T and r.arm == arm and r.log.exists()
                        and r.meta.exists()]
                entry = {"description": dict((x[0], x[3]) for x in ARMS)[arm],
                         "train_flags": dict((x[0], x[1]) for x in ARMS)[arm]
                         + (["--layers", str(a.layers + 1)] if arm == "standard-L+1" else []),
                         "seeds": [], "final_val_loss": {}, "curves": {}}
                params, tps, plan, cmd = set(), [], None, None
                for r in sorted(runs, key=lambda r: r.seed):
                    meta = json.loads(r.meta.read_text())
                    _, val = read_log(r.log)
                    if not val or val[-1][0] != a.steps:
                        continue
                    entry["seeds"].append(r.seed)
                    entry["final_val_loss"][str(r.seed)] = val[-1][1]
                    entry["curves"][str(r.seed)] = val
                    params.add(meta["parameters"])
                    if meta.get("tokens_per_s_median"):
                        tps.append(meta["tokens_per_s_median"])
                    plan = plan or meta.get("plan")
                    cmd = cmd or meta.get("command")
                    entry.setdefault("logs", []).append(str(r.log.relative_to(self.out)))
                losses = list(entry["final_val_loss"].values())
                entry["parameters"] = min(params) if params else None
                entry["plan"] = plan
                entry["example_command"] = cmd
                entry["tokens_per_s_median"] = statistics.median(tps) if tps else None
                entry["n"] = len(losses)
                entry["mean"] = statistics.fmean(losses) if losses else None
                entry["sd"] = statistics.stdev(losses) if len(losses) > 1 else None
                entry["min"] = min(losses) if losses else None
                entry["max"] = max(losses) if losses else None
                ctx["arms"][arm] = entry
            base = ctx["arms"].get("standard")
            for arm, e in ctx["arms"].items():
                e["diff_from_standard"] = None
                if arm == "standard" or not base or e["mean"] is None or base["mean"] is None:
                    continue
                paired = {s: e["final_val_loss"][s] - base["final_val_loss"][s]
                          for s in e["final_val_loss"] if s in base["final_val_loss"]}
                d = list(paired.values())
                e["diff_from_standard"] = {
                    "mean_difference": e["mean"] - base["mean"],
                    "per_seed": paired,
                    "paired_mean": statistics.fmean(d) if d else None,
                    "paired_sd": statistics.stdev(d) if len(d) > 1 else None,
                }
            results.append(ctx)
        return results

    def report(self):
        a = self.args
        self.out.mkdir(parents=True, exist_ok=True)
        results = self.collect()
        n_done = sum(e["n"] for c in results for e in c["arms"].values())
        if n_done == 0:
            raise StudyError(f"no finished runs in {self.out} to report on")
        complete = n_done == len(self.runs)
        amap = self.attention_map()
        curves = self.plot_curves(results)
        summary = {
            "command": self.command_line(),
            "date": now_iso(),
            "complete": complete, "runs_finished": n_done, "runs_planned": len(self.runs),
            "machine": self.machine,
            "run_by": sorted({json.loads(r.meta.read_text()).get("study_command") or "?"
                              for r in self.runs if r.meta.exists() and r.log.exists()}),
            "products": sorted({json.loads(r.meta.read_text()).get("products") or "?"
                                for r in self.runs if r.meta.exists() and r.log.exists()}),
            "train_binary_sha256": sorted({json.loads(r.meta.read_text()).get("train_sha256")
                                           for r in self.runs if r.meta.exists() and r.log.exists()}
                                          - {None}),
            "settings": {
                "model": {"layers": a.layers, "heads": a.heads, "width": a.width,
                          "vocabulary": 256},
                "steps": a.steps, "warmup": a.warmup, "lr": a.lr, "min_lr": a.min_lr,
                "schedule": "linear warm-up, cosine decay to min_lr; AdamW betas 0.9/0.95, weight "
                            "decay 0.1, clip 1.0 (train defaults)",
                "eval_interval": a.eval_interval, "eval_batches": a.eval_batches,
                "seeds": a.seed_list, "arms": a.arm_list,
                "contexts": [{"T": t, "B": b} for t, b in a.context_list],
                "data": str(self.data), "data_bytes": self.n_bytes, "data_sha256": self.data_sha,
                "val_fraction": a.val_fraction, "threads_per_run": 1, "jobs": a.jobs,
            },
            "statistics": "final_val_loss = validation loss (nats/byte) at the last step; mean over "
                          "seeds; sd = sample standard deviation (n-1) over seeds; min/max over "
                          "seeds; diff_from_standard.paired_* = mean and sd over seeds of (arm - "
                          "standard) with the same seed; tokens_per_s_median = median over seeds of "
                          "each run's median step throughput (1 thread, --jobs runs side by side)",
            "contexts": [{k: v for k, v in c.items()} for c in results],
            "attention_map": amap,
            "curves_png": curves,
        }
        for c in summary["contexts"]:
            for e in c["arms"].values():
                e["curves"] = {s: [[st, v] for st, v in pts] for s, pts in e["curves"].items()}
        write_atomic(self.out / "study.json", json.dumps(summary, indent=1) + "\n")
        write_atomic(self.out / "results.md", self.markdown(summary, results))
        say(f"wrote {self.out / 'study.json'} and {self.out / 'results.md'}"
            + ("" if complete else f" ({n_done} of {len(self.runs)} runs finished)"))
        say()
        say(self.markdown_tables(results))

    def markdown_tables(self, results):
        a = self.args
        lines = []
        for c in results:
            lines.append(f"### T = {c['T']}, B = {c['B']} ({c['T'] * c['B']:,} tokens per step, "
                         f"{a.steps} steps)")
            lines.append("")
            lines.append("| arm | parameters | tokens/s | final val loss, mean ± sd | min – max | "
                         "Δ vs standard (mean ± sd of per-seed Δ) |")
            lines.append("|---|---:|---:|---|---|---|")
            for arm, e in c["arms"].items():
                if e["n"] == 0:
                    lines.append(f"| {arm} | | | (no finished run) | | |")
                    continue
                sd = f" ± {e['sd']:.4f}" if e["sd"] is not None else ""
                d = e["diff_from_standard"]
                if arm == "standard":
                    dtxt = "—"
                elif d is None:
                    dtxt = "n/a"
                else:
                    dtxt = f"{d['mean_difference']:+.4f}"
                    if d["paired_sd"] is not None:
                        dtxt += f" ± {d['paired_sd']:.4f}"
                tps = f"{e['tokens_per_s_median']:,.0f}" if e["tokens_per_s_median"] else "?"
                lines.append(f"| {arm} | {e['parameters']:,} | {tps} | {e['mean']:.4f}{sd} (n={e['n']}) "
                             f"| {e['min']:.4f} – {e['max']:.4f} | {dtxt} |")
            lines.append("")
        if len(results) > 1:
            lines.append("### Δ vs standard by context length (does the gain grow with context?)")
            lines.append("")
            lines.append("| arm | " + " | ".join(f"T = {c['T']}" for c in results) + " |")
            lines.append("|---|" + "---|" * len(results))
            for arm in a.arm_list:
                if arm == "standard":
                    continue
                cells = []
                for c in results:
                    d = c["arms"][arm]["diff_from_standard"]
                    if d is None:
                        cells.append("n/a")
                    else:
                        cells.append(f"{d['mean_difference']:+.4f}" + (
                            f" ± {d['paired_sd']:.4f}" if d["paired_sd"] is not None else ""))
                lines.append(f"| {arm} | " + " | ".join(cells) + " |")
            lines.append("")
        lines.append("Final validation loss per seed (nats/byte):")
        lines.append("")
        seeds = a.seed_list
        lines.append("| T | arm | " + " | ".join(f"seed {s}" for s in seeds) + " |")
        lines.append("|---|---|" + "---:|" * len(seeds))
        for c in results:
            for arm, e in c["arms"].items():
                cells = [f"{e['final_val_loss'][str(s)]:.4f}" if str(s) in e["final_val_loss"]
                         else "" for s in seeds]
                lines.append(f"| {c['T']} | {arm} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def markdown(self, summary, results):
        a = self.args
        st = summary["settings"]
        out = []
        out.append("# Variant study: results")
        out.append("")
        if not summary["complete"]:
            out.append(f"**Incomplete: {summary['runs_finished']} of {summary['runs_planned']} runs "
                       "finished.**")
            out.append("")
        out.append("Produced by (from the repository root):")
        out.append("")
        out.append("```sh")
        out.append(summary["command"])
        out.append("```")
        out.append("")
        others = [c for c in summary["run_by"] if c != summary["command"]]
        if others:
            out.append("The runs themselves were trained by:")
            out.append("")
            out.append("```sh")
            out.extend(summary["run_by"])
            out.append("```")
            out.append("")
        m = summary["machine"]
        out.append(f"- date: {summary['date']}")
        out.append(f"- machine: {m['cpu']} ({m['cpus']} CPUs), Python {m['python']}")
        out.append(f"- git commit: {m['git_commit']}")
        if summary["products"] != ["?"]:
            out.append(f"- matrix products (as train reports them): {', '.join(summary['products'])}")
        shas = summary["train_binary_sha256"]
        if len(shas) > 1:
            out.append(f"- **warning: the runs used {len(shas)} different `train` binaries** (the "
                       "study was continued after a rebuild)")
        out.append(f"- model: L{a.layers} H{a.heads} C{a.width}, byte vocabulary (256)"
                   + (f"; standard-L+1 has L{a.layers + 1}" if "standard-L+1" in a.arm_list else ""))
        out.append(f"- data: `{show_path(st['data'])}` ({st['data_bytes']:,} bytes, sha256 "
                   f"{st['data_sha256'][:16]}…), last {a.val_fraction:g} for validation")
        out.append(f"- budget: {a.steps} steps per run, warm-up {a.warmup}, lr {a.lr:g} cosine to "
                   f"{a.min_lr:g}, AdamW (train defaults: betas 0.9/0.95, weight decay 0.1, clip 1.0)")
        out.append(f"- validation every {a.eval_interval} steps on {a.eval_batches} batches of fixed "
                   "windows (the same windows for every run at a context length)")
        out.append(f"- seeds {', '.join(map(str, a.seed_list))}: a seed fixes the initialisation and "
                   "the batch order, the same for every arm")
        out.append(f"- every run: `train --threads 1`, {a.jobs} runs side by side; tokens/s is the "
                   "median step throughput of one such run (median over seeds)")
        out.append("")
        out.append("Final validation loss in nats per byte at the last step; mean ± sd over seeds "
                   "(sd = sample standard deviation, n-1); min – max over seeds; Δ = arm mean − "
                   "standard mean, ± the sd over seeds of the per-seed differences (same seed, same "
                   "batches).")
        out.append("")
        out.append(self.markdown_tables(results))
        out.append("")
        out.append("## Arms")
        out.append("")
        out.append("| arm | plan (as train reports it) | train flags | in this model |")
        out.append("|---|---|---|---|")
        first = results[0]
        for arm in a.arm_list:
            e = first["arms"][arm]
            out.append(f"| {arm} | {e['plan'] or '?'} | `{shlex.join(e['train_flags'])}` | "
                       f"{arm_details(arm, a)} |")
        out.append("")
        base = first["arms"].get("standard")
        if base and base["parameters"]:
            extra = [f"{arm} {e['parameters'] - base['parameters']:+,}"
                     for arm, e in first["arms"].items() if arm != "standard" and e["parameters"]]
            if extra:
                out.append(f"Parameters relative to standard at T = {first['T']}: "
                           + ", ".join(extra) + ". (standard-L+1 is a larger model, not an exact "
                           "parameter match for the shortcut arm.)")
                out.append("")
        ex = next((e["example_command"] for c in results for e in c["arms"].values()
                   if e.get("example_command")), None)
        if ex:
            out.append("One run's exact command:")
            out.append("")
            out.append("```sh")
            out.append(ex)
            out.append("```")
            out.append("")
        if summary["curves_png"]:
            out.append("## Validation loss")
            out.append("")
            out.append("Mean over seeds, shaded band min – max; bottom row: the second half of the run.")
            out.append("")
            out.append(f"![validation loss curves]({summary['curves_png']})")
            out.append("")
        am = summary["attention_map"]
        if am and am.get("json"):
            out.append("## Shortcut attention map")
            out.append("")
            out.append(f"Final block of the {am['model']} model: attention mass per depth (rows) for "
                       f"each byte of the text (columns), averaged over heads; each column sums to 1. "
                       f"Mean mass per depth: " + ", ".join(
                           f"{k} {v:.3f}" for k, v in am.get("mean_mass", {}).items()) + ".")
            out.append("")
            if am.get("png"):
                out.append(f"![shortcut attention map]({am['png']})")
                out.append("")
            out.append(f"Command: `{am['command']}`")
            out.append("")
        elif am and am.get("skipped"):
            out.append(f"Shortcut attention map: {am['skipped']}")
            out.append("")
        out.append("Logs: `runs/T<T>_B<B>/<arm>_s<seed>.jsonl` (the train example's JSON-lines log: "
                   "`{step, train_loss, lr, grad_norm, ms, tokens_per_s}` per step and `{step, "
                   "val_loss}` per validation), `.json` (the run's record: command, parameters, "
                   "time), `.stderr.txt` (train's messages). Everything above is in `study.json`.")
        return "\n".join(out) + "\n"

    def attention_map(self):
        r = self.map_run
        if r is None:
            return {"skipped": f"the {MAP_ARM} arm is not part of this study"}
        if not (r.log.exists() and r.ckpt.exists()):
            return {"skipped": f"the model of {r.name} is not trained yet"}
        if not os.access(self.amap, os.X_OK):
            return {"skipped": f"{self.amap} is missing (build it, or run without --report-only)"}
        text = self.args.map_text if self.args.map_text is not None else self.map_text(r.T)
        out_json = self.out / "attention_map.json"
        cmd = [str(self.amap), "--checkpoint", str(r.ckpt), "--text", text, "--out", str(out_json),
               "--threads", "1"]
        p = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
        if p.returncode != 0:
            msg = (f"attention_map failed (exit {p.returncode}): {(p.stderr or p.stdout).strip()}"
                   f"\n  command: {shlex.join(cmd)}")
            say(f"{PROG}: warning: {msg}")
            return {"skipped": msg}
        write_atomic(self.out / "attention_map.txt", p.stdout)
        d = json.loads(out_json.read_text())
        labels = ["embeddings" if j == 0 else f"depth {j}" for j in d["depths"]]
        mean_mass = {labels[j]: statistics.fmean(row[j] for row in d["mass"])
                     for j in range(len(labels))}
        result = {"model": r.name, "checkpoint": str(r.ckpt), "text": text,
                  "json": out_json.name, "txt": "attention_map.txt", "mean_mass": mean_mass,
                  "command": shlex.join(["build/examples/attention_map" if self.amap ==
                                         ROOT / "build/examples/attention_map" else str(self.amap),
                                         *cmd[1:]])}
        plot = ROOT / "examples" / "tools" / "plot_attention_map.py"
        out_png = self.out / "attention_map.png"
        p = subprocess.run([sys.executable, str(plot), str(out_json), "--out", str(out_png)],
                           capture_output=True, text=True)
        if p.returncode == 0:
            result["png"] = out_png.name
            say(f"wrote {out_png} (model: {r.name})")
        else:
            say(f"{PROG}: warning: plot_attention_map.py failed: {(p.stderr or p.stdout).strip()}")
        return result

    def map_text(self, T):
        """At most min(T, 80) bytes, whole words: the book's first sentence for the bundled corpus
        (as in docs/results), else the start of the validation split (text not trained on)."""
        if self.data == DEFAULT_DATA.resolve():
            words = ("Call me Ishmael. Some years ago, never mind how long precisely, I went to "
                     "sea.").split()
            start = 0
        else:
            raw = self.data.read_bytes()
            val = raw[len(raw) - int(len(raw) * self.args.val_fraction):]
            words = val.decode("utf-8", errors="ignore").split()
            start = 1 if len(words) > 1 else 0  # the split's first word may be cut
        limit = min(T, 80)
        text = ""
        for w in words[start:]:
            cand = (text + " " + w) if text else w
            if len(cand.encode("utf-8")) > limit:
                break
            text = cand
        return text or words[start].encode("utf-8")[:limit].decode("utf-8", errors="ignore") or "."

    def plot_curves(self, results):
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            say(f"{PROG}: warning: matplotlib is missing (Debian: apt-get install "
                "python3-matplotlib): no curves.png")
            return None
        colors = dict(zip(ARM_NAMES, ["#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#7f7f7f"]))
        n = len(results)
        fig, axes = plt.subplots(2, n, figsize=(5.2 * n + 0.5, 7.2), squeeze=False)
        half = self.args.steps // 2
        for col, c in enumerate(results):
            for row in range(2):
                ax = axes[row][col]
                lo_all, hi_all = [], []
                for arm, e in c["arms"].items():
                    if not e["curves"]:
                        continue
                    steps = sorted(set.intersection(*[set(s for s, _ in pts)
                                                      for pts in e["curves"].values()]))
                    vals = [[dict(pts)[s] for pts in e["curves"].values()] for s in steps]
                    if row == 1:
                        keep = [i for i, s in enumerate(steps) if s >= half]
                        steps = [steps[i] for i in keep]
                        vals = [vals[i] for i in keep]
                    if not steps:
                        continue
                    mean = [statistics.fmean(v) for v in vals]
                    lo = [min(v) for v in vals]
                    hi = [max(v) for v in vals]
                    lo_all += lo
                    hi_all += hi
                    ax.plot(steps, mean, color=colors[arm], lw=1.6, marker="o", ms=2.5,
                            label=f"{arm} (n={e['n']})")
                    if e["n"] > 1:
                        ax.fill_between(steps, lo, hi, color=colors[arm], alpha=0.18, lw=0)
                if row == 0:
                    ax.set_title(f"T = {c['T']}, B = {c['B']}")
                else:
                    ax.set_title(f"T = {c['T']}: second half")
                    if lo_all:
                        pad = 0.05 * (max(hi_all) - min(lo_all) or 0.01)
                        ax.set_ylim(min(lo_all) - pad, max(hi_all) + pad)
                ax.set_xlabel("step")
                ax.set_ylabel("validation loss (nats/byte)")
                ax.grid(alpha=0.3, which="both")
                if row == 0:
                    ax.legend(fontsize=8)
        fig.suptitle(f"validation loss, mean over seeds, band min – max ({self.data.name}, "
                     f"{self.args.steps} steps)", fontsize=10)
        fig.tight_layout()
        path = self.out / "curves.png"
        tmp = path.with_name("curves.tmp.png")
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
        plt.close(fig)
        say(f"wrote {path}")
        return path.name


def arm_details(arm, a):
    """What an arm's defaults resolve to for the base model (as strata computes them)."""
    L, NH = a.layers, a.heads
    if arm.startswith("sla-"):
        d = max(1, math.floor(3 * L / 4 + 0.5))   # AttentionPlan::skip_layer defaults
        n = max(1, math.floor(3 * NH / 4 + 0.5))
        skip_layers = [l for l in range(1, L + 1) if l - d >= 1]
        if not skip_layers:
            return f"d = {d}, n = {n}: no layer can skip (d >= L), the same as standard"
        what = ("attend over their own and layer {s}'s keys" if arm == "sla-concat"
                else "use layer {s}'s keys and values")
        parts = [f"layer {l}: heads 0-{n - 1} " + what.format(s=l - d) for l in skip_layers]
        return f"d = {d}, n = {n}; " + "; ".join(parts)
    if arm == "shortcut":
        return (f"final layer attends over depths 1..{L - 1}; feature maps (C -> C -> C) on "
                f"depths 1..{L - 2}" if L > 2 else "final layer attends over depth 1 only")
    if arm == "standard-L+1":
        return f"L = {L + 1}"
    return f"L = {L}"


def show_path(path):
    """A path inside the source tree relative to it, others as they are."""
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return str(path)


def write_atomic(path, text):
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv):
    args = parse_args(argv)
    study = Study(args, argv)
    try:
        study.main()
    except StudyError as e:
        die(str(e))
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main(sys.argv[1:])
