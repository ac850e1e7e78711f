"""Run benchmarks 1-4 (docs/performance.md) and print ours / HF transformers ratios measured in this run.

    .venv/bin/python -m benchmarks.run_all --quick            # < 10 min on a 2-core CPU
    .venv/bin/python -m benchmarks.run_all --json out.json    # full set
    .venv/bin/python -m benchmarks.run_all --device cuda      # on a GPU (memory: torch.cuda.max_memory_allocated)

Every training-step configuration (implementation x length x checkpointing) runs in its own process (train_step.py),
forked from this launcher before any model ran (--spawn, and always on CUDA: a fresh interpreter), so memory figures
cannot contaminate each other; throughput runs use throughput.py.
"""
import argparse
import json
import math
import sys
import time

import torch

from benchmarks import common
from benchmarks.common import machine_info

BENCH1_SECONDS = (15.6, 31.2)
BENCH2_SECONDS = (5.0, 10.0, 20.0, 40.0)


def run_worker(args, module, cmd):
    return common.run_worker(module, cmd, spawn=args.spawn)


def fmt_ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"


def train_step(args, impl, seconds, ckpt=False, memory="activations"):
    cmd = ["--impl", impl, "--seconds", seconds, "--device", args.device, "--dtype", args.dtype,
           "--dropout", args.dropout, "--memory", memory, "--repeats", args.repeats, "--threads", args.threads]
    if ckpt:
        cmd.append("--checkpoint-activations")
    t = time.perf_counter()
    r = run_worker(args, "benchmarks.train_step", cmd)
    r["wall_s"] = round(time.perf_counter() - t, 1)
    print(f"    {impl:4s} {'ckpt' if ckpt else '    '} {seconds:5.1f} s audio ({r['frames']} frames): "
          f"act {r.get('act_peak_mib', '-')} MiB, step {r.get('step_peak_mib', '-')} MiB, {r['time_s']} s/step "
          f"[{r['wall_s']} s wall]", flush=True)
    return r


def bench1(args, out):
    print("\n[1] s2c forward+backward, one utterance, speecht5_base dims, ours / HF", flush=True)
    memory = "activations" if args.quick else "both"
    rows = []
    for seconds in args.bench1_seconds:
        hf = train_step(args, "hf", seconds, memory=memory)
        ours = train_step(args, "ours", seconds, memory=memory)
        ckpt = train_step(args, "ours", seconds, ckpt=True, memory=memory)
        rows.append({"seconds": seconds, "hf": hf, "ours": ours, "ours_ckpt": ckpt})
    out["bench1"] = rows
    print("\n  length | metric                        |    HF | ours  (ratio) | ours+ckpt (ratio)")
    for row in rows:
        hf, o, c = row["hf"], row["ours"], row["ours_ckpt"]
        metrics = [("act_peak_mib", "activation peak MiB"), ("step_peak_mib", "step peak MiB (+grad buffers)"),
                   ("time_s", "time s/step")]
        for key, label in metrics:
            if key in hf:
                print(f"  {row['seconds']:5.1f} s | {label:29s} | {hf[key]:5.0f} | {o[key]:5.0f} "
                      f"({fmt_ratio(o[key], hf[key])}) | {c[key]:5.0f} ({fmt_ratio(c[key], hf[key])})")
    print("  goals: memory <= 0.7x HF (ckpt off), <= 0.35x (ckpt on); time <= 1.0x HF", flush=True)


def growth(values):
    """Factor per doubling of length, from consecutive doublings and overall (geometric mean)."""
    steps = [b / a for a, b in zip(values, values[1:])]
    overall = math.exp(sum(map(math.log, steps)) / len(steps)) if steps else float("nan")
    return steps, overall


def bench2(args, out):
    seconds = BENCH2_SECONDS[:-1] if args.quick else BENCH2_SECONDS
    print(f"\n[2] memory and time versus length {list(seconds)} s (activation peak, one step)", flush=True)
    rows = {"hf": [], "ours": []}
    for s in seconds:
        for impl in ("hf", "ours"):
            rows[impl].append(train_step(args, impl, s, memory="activations"))
    out["bench2"] = rows
    print("\n  impl | " + " | ".join(f"{s:5.1f} s" for s in seconds) + " | growth per doubling (each; mean)")
    summary = {}
    for key, label in (("act_peak_mib", "MiB"), ("time_s", "s")):
        for impl in ("hf", "ours"):
            vals = [r[key] for r in rows[impl]]
            steps, overall = growth(vals)
            summary[f"{impl}_{key}_growth"] = round(overall, 3)
            print(f"  {impl:4s} | " + " | ".join(f"{v:7.1f}" for v in vals) + f" {label} | "
                  + ", ".join(f"{x:.2f}" for x in steps) + f"; {overall:.2f}")
        print("  ours/HF | " + " | ".join(fmt_ratio(o[key], h[key]).rjust(7)
                                           for o, h in zip(rows["ours"], rows["hf"])))
    out["bench2_growth"] = summary
    sys.stdout.flush()


def _throughput(args, out, key, bench, title):
    """HF against ours in one run of benchmarks.throughput --bench <bench>: the ratio is what the bench reports."""
    size = args.size or ("base" if args.device.startswith("cuda") else "tiny")
    print(f"\n{title.format(size=size)}", flush=True)
    res = {}
    for impl in ("hf", "ours"):
        res[impl] = run_worker(args, "benchmarks.throughput", ["--bench", bench, "--impl", impl, "--size", size,
                                                                 "--device", args.device, "--dtype", args.dtype,
                                                                 "--threads", args.threads])
    out[key] = res
    print_throughput(res)


def bench3(args, out):
    _throughput(args, out, "bench3", "train", "[3] training throughput, SLUE-like lengths (lognormal, mean 8 s), "
                "speecht5_{size}: batch 1 x update_freq 16 vs max_tokens buckets x update_freq 4")


def bench4(args, out):
    _throughput(args, out, "bench4", "eval", "[4] evaluation throughput (no_grad, full length), speecht5_{size}: "
                "batch 1 vs max_tokens batches")


def print_throughput(res):
    hf, ours = res["hf"], res["ours"]
    print(f"  {ours['utterances']} utterances, mean {ours['mean_s']} s, max {ours['max_s']} s")
    print("  mode                  | batches (mean size, padding) | HF utt/s | ours utt/s | ours/HF | "
          "ours vs batch 1 | HF vs batch 1")
    rows = [("batch 1", None, hf["batch1"], ours["batch1"])]
    rows += [(f"max_tokens={o['max_tokens']}", o, h, o) for h, o in zip(hf["bucketed"], ours["bucketed"])]
    for name, info, h, o in rows:
        desc = (f"{info['n_batches']} ({info['mean_batch']}, {100 * info['padding_fraction']:.1f}%)" if info
                else f"{ours['utterances']} (1, 0%)")
        print(f"  {name:21s} | {desc:28s} | {h['utt_per_s']:8.2f} | {o['utt_per_s']:10.2f} | "
              f"{fmt_ratio(o['utt_per_s'], h['utt_per_s']):>7s} | {o.get('speedup_vs_batch1', 1.0):14.2f}x | "
              f"{h.get('speedup_vs_batch1', 1.0):12.2f}x")
    for o in ours["bucketed"]:
        if "argmax_agreement" in o:
            print(f"  ours max_tokens={o['max_tokens']}: batched vs batch-1 logits max |diff| "
                  f"{o['max_abs_logit_diff']} ({100 * o['max_rel_logit_diff']:.2f}% of max |logit|), "
                  f"argmax agreement {100 * o['argmax_agreement']:.0f}%")
    sys.stdout.flush()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="bench 1: activation peak only (one step per configuration); bench 2: 5-20 s")
    p.add_argument("--only", default="1,2,3,4", help="comma-separated benchmark numbers")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--dropout", type=float, default=0.0, help="dropouts in both implementations (benchmarks 1-2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per worker (default: 1 on CPU, which is faster and far more stable on a "
                        "shared machine; 0 = torch's default)")
    p.add_argument("--repeats", type=int, default=0, help="extra timed steps per training-step configuration")
    p.add_argument("--bench1-seconds", type=float, nargs="+", default=list(BENCH1_SECONDS),
                   help="utterance lengths of benchmark 1")
    p.add_argument("--size", choices=["tiny", "base"], default=None,
                   help="model for benchmarks 3-4 (default: tiny on CPU, base on CUDA)")
    p.add_argument("--json", default=None, help="also write all results here")
    p.add_argument("--spawn", action="store_true",
                   help="fresh interpreter per configuration instead of a fork of this launcher (slower start; "
                        "always on with --device cuda)")
    args = p.parse_args()
    if args.threads is None:
        args.threads = 0 if args.device.startswith("cuda") else 1
    if args.device.startswith("cuda"):
        args.spawn = True  # CUDA is not fork-safe once this process has queried it
    common.preload()
    info = machine_info()
    print("machine:", json.dumps(info))
    print("command:", " ".join([sys.executable, "-m", "benchmarks.run_all"] + sys.argv[1:]), flush=True)
    out = {"machine": info, "args": vars(args)}
    t = time.perf_counter()
    for n in args.only.split(","):
        {"1": bench1, "2": bench2, "3": bench3, "4": bench4}[n.strip()](args, out)
    out["total_wall_s"] = round(time.perf_counter() - t, 1)
    print(f"\ntotal wall time {out['total_wall_s']} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
