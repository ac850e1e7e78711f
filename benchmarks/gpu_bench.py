"""The GPU benchmark in one call (scripts/gpu_bench.sh runs this after installing from the wheelhouse).

Benchmarks 1-4 of docs/performance.md on one device, in fp32 and bf16, within a wall-time budget (default 420 s, so
that the whole call fits in 8 minutes on one H100/H200 including installation and CUDA start-up):
  1. one s2c training step on a 15.6 s utterance: ours vs HF transformers vs ours with activation checkpointing
     (activation and step peak memory, seconds per step);
  max batch: the largest batch of 15.6 s utterances whose training step fits in 80 GB (ours, ours + checkpointing)
     and its utterances/s (benchmarks/max_batch.py);
  4. evaluation throughput, batch 1 vs max_tokens buckets (ours, then HF);
  3. training throughput, batch 1 x update_freq 16 vs buckets x update_freq 4 (ours, then HF);
  2. step memory and time at 5, 10, 20 s (ours, HF).
Items run in that order; an item that would start after the budget is recorded as skipped, never silently dropped.
Writes <out>/gpu_bench.json (every worker's full result) and <out>/gpu_bench.md (the tables).

`--device cpu --quick` runs the same items at toy sizes (tiny model, 1 s utterances, a 16 MB cap, 6 utterances for
throughput) so that the whole pipeline is exercised on CPU (tests/test_gpu_bench.py, `make bench-gpu-smoke`).

    python -m benchmarks.gpu_bench --device cuda --out bench_out/gpu
"""
import argparse
import json
import os
import sys
import time

import torch

from benchmarks import common

DTYPES = ("fp32", "bf16")


def plan(a):
    """[(name, dtype, worker module, args)] in priority order."""
    quick = a.quick
    size = "tiny" if quick else "base"
    seconds = 1.0 if quick else 15.6
    cap = 0.016 if quick else 80.0
    base = ["--device", a.device, "--threads", a.threads]
    items = []
    for dtype in DTYPES:
        for impl, ckpt in (("ours", False), ("hf", False), ("ours", True)):
            args = ["--impl", impl, "--seconds", seconds, "--size", size, "--dtype", dtype, "--memory", "both",
                    "--repeats", 0 if quick else 2, *base] + (["--checkpoint-activations"] if ckpt else [])
            items.append((f"bench1/{impl}{'+ckpt' if ckpt else ''}", dtype, "benchmarks.train_step", args))
    for dtype in DTYPES:
        for ckpt in (False, True):
            args = ["--seconds", seconds, "--cap-gb", cap, "--size", size, "--dtype", dtype, *base,
                    "--timed-steps", 1 if quick else 3, "--max-batch", 8 if quick else 512]
            items.append((f"max_batch/ours{'+ckpt' if ckpt else ''}", dtype, "benchmarks.max_batch",
                          args + (["--checkpoint-activations"] if ckpt else [])))
    throughput = ["--size", size] + (["--utterances", 6, "--per-update", 2, "--bucket-update-freq", 1,
                                      "--max-tokens", "400000"] if quick else [])
    for bench in ("eval", "train"):
        for impl in ("ours", "hf"):
            for dtype in DTYPES:
                items.append((f"bench{4 if bench == 'eval' else 3}/{impl}", dtype, "benchmarks.throughput",
                              ["--bench", bench, "--impl", impl, "--dtype", dtype, *throughput, *base]))
    for dtype in DTYPES:
        for s in ((1.0, 2.0) if quick else (5.0, 10.0, 20.0)):
            for impl in ("ours", "hf"):
                items.append((f"bench2/{impl}/{s:g}s", dtype, "benchmarks.train_step",
                              ["--impl", impl, "--seconds", s, "--size", size, "--dtype", dtype, "--memory",
                               "activations", *base]))
    return items


def _f(x, digits=2):
    return "-" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def markdown(out) -> str:
    r = {(x["name"], x["dtype"]): x.get("result") for x in out["items"]}
    lines = [f"# GPU benchmark ({out['device']}, {out['mode']})", "",
             f"Machine: `{json.dumps(out['machine'])}`  ", f"Wall time: {out['wall_s']} s (budget {out['budget_s']} s)",
             ""]
    lines += ["## 1. One training step, one utterance of " + str(out["bench1_seconds"]) + " s", "",
              "| dtype | impl | act. peak MiB | step peak MiB | s/step |", "|---|---|---|---|---|"]
    for dtype in DTYPES:
        for impl in ("hf", "ours", "ours+ckpt"):
            x = r.get((f"bench1/{impl}", dtype))
            if x:
                lines.append(f"| {dtype} | {impl} | {_f(x.get('act_peak_mib'), 0)} | {_f(x.get('step_peak_mib'), 0)} "
                             f"| {_f(x.get('time_s'), 3)} |")
    lines += ["", f"## Largest batch of {out['bench1_seconds']} s utterances in {out['cap_gb']} GB", "",
              "| dtype | impl | max batch | peak GB | s/step | utt/s |", "|---|---|---|---|---|---|"]
    for dtype in DTYPES:
        for impl in ("ours", "ours+ckpt"):
            x = r.get((f"max_batch/{impl}", dtype))
            if x:
                fit = [p for p in x["probes"] if p["fits"] and p["batch"] == x["max_batch"]]
                lines.append(f"| {dtype} | {impl} | {x['max_batch']}{'+' if x['search_capped'] else ''} | "
                             f"{_f(fit[0]['peak_gb'] if fit else None, 3)} | {_f(x.get('step_s'), 3)} | "
                             f"{_f(x.get('utt_per_s'))} |")
    for n, bench in ((4, "evaluation"), (3, "training")):
        lines += ["", f"## {n}. {bench} throughput (utterances/s)", "",
                  "| dtype | impl | batch 1 | bucketed (max_tokens) | speed-up | batched vs batch-1 logits |",
                  "|---|---|---|---|---|---|"]
        for dtype in DTYPES:
            for impl in ("ours", "hf"):
                x = r.get((f"bench{n}/{impl}", dtype))
                if x:
                    for b in x["bucketed"]:
                        agree = (f"max diff {b['max_abs_logit_diff']}, argmax {100 * b['argmax_agreement']:.0f}%"
                                 if "argmax_agreement" in b else "-")
                        lines.append(f"| {dtype} | {impl} | {_f(x['batch1']['utt_per_s'])} | {_f(b['utt_per_s'])} "
                                     f"({b['max_tokens']}) | {_f(b['speedup_vs_batch1'])}x | {agree} |")
    lines += ["", "## 2. Activation peak and step time versus length", "", "| dtype | impl | length | act. peak MiB | "
              "s/step |", "|---|---|---|---|---|"]
    for x in out["items"]:
        if x["name"].startswith("bench2/") and x.get("result"):
            _, impl, s = x["name"].split("/")
            lines.append(f"| {x['dtype']} | {impl} | {s} | {_f(x['result'].get('act_peak_mib'), 0)} | "
                         f"{_f(x['result'].get('time_s'), 3)} |")
    skipped = [f"{x['name']} ({x['dtype']}): {x['status']}" for x in out["items"] if x["status"] != "ok"]
    lines += ["", "Not measured: " + ("; ".join(skipped) if skipped else "nothing"), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="toy sizes: the CPU smoke run")
    p.add_argument("--out", default="bench_out/gpu")
    p.add_argument("--budget-s", type=float, default=420.0, help="no item starts after this many seconds")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: 1 on CPU)")
    a = p.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"gpu_bench: --device {a.device} but torch {torch.__version__} sees no CUDA GPU; run with --device cpu "
              f"--quick for the smoke run", file=sys.stderr)
        return 2
    if a.threads is None:
        a.threads = 0 if a.device.startswith("cuda") else 1
    common.preload()
    os.makedirs(a.out, exist_ok=True)
    out = {"device": a.device, "mode": "quick" if a.quick else "full", "machine": common.machine_info(),
           "budget_s": a.budget_s, "bench1_seconds": 1.0 if a.quick else 15.6, "cap_gb": 0.016 if a.quick else 80.0,
           "command": " ".join([sys.executable, "-m", "benchmarks.gpu_bench"] + list(argv or sys.argv[1:])),
           "items": []}
    start = time.perf_counter()
    failed = 0
    for name, dtype, module, args in plan(a):
        item = {"name": name, "dtype": dtype, "module": module, "args": [str(x) for x in args]}
        elapsed = time.perf_counter() - start
        if elapsed > a.budget_s:
            item["status"] = f"skipped: time budget of {a.budget_s:.0f} s used up"
        else:
            t = time.perf_counter()
            try:
                item["result"] = common.run_worker(module, args, spawn=a.device.startswith("cuda"), timeout=600)
                item["status"] = "ok"
            except RuntimeError as e:
                failed += 1
                item["status"] = "failed: " + str(e).strip().splitlines()[-1][:300]
            item["wall_s"] = round(time.perf_counter() - t, 1)
        print(f"[{time.perf_counter() - start:6.1f} s] {name:22s} {dtype}: {item['status']}", flush=True)
        out["items"].append(item)
    out["wall_s"] = round(time.perf_counter() - start, 1)
    with open(os.path.join(a.out, "gpu_bench.json") + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
    os.replace(os.path.join(a.out, "gpu_bench.json") + ".tmp", os.path.join(a.out, "gpu_bench.json"))
    with open(os.path.join(a.out, "gpu_bench.md"), "w") as f:
        f.write(markdown(out))
    print(f"wrote {a.out}/gpu_bench.json and {a.out}/gpu_bench.md ({out['wall_s']} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
