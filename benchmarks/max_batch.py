"""Worker of scripts/gpu_bench.sh: the largest batch of equal-length utterances whose s2c training step (forward +
summed CE + backward, gradient buffers allocated) fits in a memory cap, and its utterances/s. Prints one JSON line.

A batch fits when the step does not run out of memory and its peak (common.PeakMemory: CUDA max_memory_allocated,
CPU tensor bytes from torch.profiler, plus the weights) stays under --cap-gb. On CUDA the
process is also held to the cap with torch.cuda.set_per_process_memory_fraction, so an 80 GB figure measured on a
141 GB H200 is what an 80 GB H100/A100 can run. Search: doubling from 1, then bisection between the last fit and the
first miss (about 2 log2(B) steps).

    python -m benchmarks.max_batch --seconds 15.6 --cap-gb 80 [--checkpoint-activations] [--dtype bf16]
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F

from benchmarks.common import DTYPES, SAMPLE_RATE, PeakMemory, build, release_cached_memory, synthetic_batch


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=15.6)
    p.add_argument("--cap-gb", type=float, default=80.0)
    p.add_argument("--size", default="base", choices=["base", "tiny"])
    p.add_argument("--checkpoint-activations", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--max-batch", type=int, default=512, help="stop the search here")
    p.add_argument("--timed-steps", type=int, default=3, help="steps timed at the largest batch")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cuda = a.device.startswith("cuda")
    cap = a.cap_gb * 1e9  # decimal GB, as cards are sold: 80 GB = 74.5 GiB, under what an 80 GB H100 has
    if cuda:
        total = torch.cuda.get_device_properties(torch.device(a.device)).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), torch.device(a.device))
    model = build("ours", a.size, 0.0, a.checkpoint_activations, a.device, a.dtype).train()
    params = [q for q in model.parameters() if q.requires_grad]
    weights = sum(q.numel() * q.element_size() for q in model.parameters())  # CPU: outside the measured region
    samples = int(round(a.seconds * SAMPLE_RATE))
    target_dtype = DTYPES[a.dtype]

    def step(batch: int) -> float:
        source, pad = synthetic_batch([samples] * batch, a.device, target_dtype)
        target = torch.zeros(batch, dtype=torch.long, device=a.device)
        F.cross_entropy(model(source, pad).float(), target, reduction="sum").backward()
        for q in params:
            q.grad = None
        return batch

    probes = []

    def fits(batch: int) -> bool:
        release_cached_memory(a.device)
        try:
            with PeakMemory(a.device) as mem:
                step(batch)
            # CUDA: everything allocated at the peak (weights, batch, activations, gradient buffers)
            peak = torch.cuda.max_memory_allocated() if cuda else mem.mib * 2 ** 20 + weights
            ok = peak <= cap
        except torch.OutOfMemoryError:
            peak, ok = None, False
        for q in params:
            q.grad = None
        release_cached_memory(a.device)
        probes.append({"batch": batch, "fits": ok, "peak_gb": None if peak is None else round(peak / 1e9, 3)})
        return ok

    best, miss = 0, None
    batch = 1
    while batch <= a.max_batch and fits(batch):
        best, batch = batch, batch * 2
    miss = batch if batch <= a.max_batch else None
    while miss is not None and miss - best > 1:
        mid = (best + miss) // 2
        if fits(mid):
            best = mid
        else:
            miss = mid
    result = {"seconds": a.seconds, "samples": samples, "cap_gb": a.cap_gb, "size": a.size, "dtype": a.dtype,
              "device": a.device, "ckpt": a.checkpoint_activations, "max_batch": best,
              "search_capped": miss is None, "probes": probes}
    if best:
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        times = []
        for _ in range(a.timed_steps):
            sync()
            t = time.perf_counter()
            step(best)
            sync()
            times.append(time.perf_counter() - t)
        result["step_s"] = round(min(times), 4)
        result["utt_per_s"] = round(best / min(times), 3)
    return result


if __name__ == "__main__":
    print(json.dumps(main()), flush=True)
