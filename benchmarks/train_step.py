"""Worker for benchmarks 1 and 2: s2c training steps (forward + summed CE loss + backward) on one utterance, in a
fresh process. Prints one JSON line.

Memory (MiB above the loaded model; PeakMemory in common.py: CPU = tensor bytes recorded by torch.profiler, CUDA =
torch.cuda.max_memory_allocated):
  step_peak_mib: gradients start as None (fairseq's optimizer.zero_grad), so the peak also holds the gradient buffers
                 allocated during backward (4 bytes/parameter in fp32, identical in both implementations);
  act_peak_mib:  gradient buffers already exist (steady state), so the peak is activations + temporaries only.
Time: seconds per step, the minimum over the process's steps (the first one included).

    python -m benchmarks.train_step --impl ours|hf --seconds 15.6 [--checkpoint-activations]
"""
import argparse
import json

import torch
import torch.nn.functional as F

from benchmarks.common import DTYPES, SAMPLE_RATE, PeakMemory, build, synthetic_batch, timer


def frames(samples: int) -> int:
    for kernel, stride in [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2:
        samples = (samples - kernel) // stride + 1
    return samples


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--impl", choices=["ours", "hf"], required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--size", default="base", choices=["base", "tiny"])
    p.add_argument("--dropout", type=float, default=0.0, help="all dropouts (both implementations)")
    p.add_argument("--checkpoint-activations", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--memory", default="both", choices=["step", "activations", "both"])
    p.add_argument("--repeats", type=int, default=0, help="extra timed steps without memory recording")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)

    model = build(a.impl, a.size, a.dropout, a.checkpoint_activations, a.device, a.dtype).train()
    samples = int(round(a.seconds * SAMPLE_RATE))
    source, pad = synthetic_batch([samples], a.device, DTYPES[a.dtype])
    target = torch.zeros(1, dtype=torch.long, device=a.device)
    params = [prm for prm in model.parameters() if prm.requires_grad]

    def step(keep_grads: bool):
        logits = model(source, pad)
        F.cross_entropy(logits.float(), target, reduction="sum").backward()
        for prm in params:
            if keep_grads:
                prm.grad.zero_()
            else:
                prm.grad = None

    result = {"impl": a.impl, "seconds": a.seconds, "samples": samples, "frames": frames(samples),
              "ckpt": a.checkpoint_activations, "size": a.size, "dtype": a.dtype, "dropout": a.dropout,
              "device": a.device, "threads": torch.get_num_threads(),
              "grad_mib": round(sum(prm.numel() * prm.element_size() for prm in params) / 2 ** 20, 1)}
    times = []
    if a.memory in ("step", "both"):
        with PeakMemory(a.device) as mem:
            with timer(a.device, times):
                step(keep_grads=False)
        result["step_peak_mib"] = round(mem.mib, 1)
        if mem.rss_mib is not None:
            result["step_rss_mib"] = round(mem.rss_mib, 1)
    if a.memory in ("activations", "both"):
        for prm in params:
            prm.grad = torch.zeros_like(prm)
        with PeakMemory(a.device) as mem:
            with timer(a.device, times):
                step(keep_grads=True)
        result["act_peak_mib"] = round(mem.mib, 1)
    for _ in range(a.repeats):
        with timer(a.device, times):
            step(keep_grads=True)
    result["time_s"] = round(min(times), 3)
    result["times_s"] = [round(t, 3) for t in times]
    return result


if __name__ == "__main__":
    print(json.dumps(main()), flush=True)
