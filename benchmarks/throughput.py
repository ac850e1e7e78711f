"""Worker for benchmarks 3 and 4 (one process per implementation). Prints one JSON line.

3 (--bench train): training throughput in utterances/s on a SLUE-like length distribution (seeded lognormal, mean
  8 s), batch 1 x update_freq 16 versus length-bucketed batches from fairseq's own batch_by_size (max_tokens padded
  samples, utterances sorted by length as SpeechClassDataset.ordered_indices does) x update_freq 4 with max_tokens =
  4 x mean length, i.e. 16 utterances per update on average; both run forward, backward and an Adam step per update
  over the same utterances.
4 (--bench eval): evaluation throughput (eval mode, no_grad, full-length utterances), batch 1 versus bucketed batches
  (max_tokens_valid), plus how far batched logits are from batch-1 logits (padding is not free: the official frame
  padding rule and the positional convolution see the padded tail).

    python -m benchmarks.throughput --bench train|eval --impl ours|hf [--size tiny|base]
"""
import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from fairseq.data import data_utils

from benchmarks.common import DTYPES, build, slue_like_lengths, synthetic_batch


def bucketed(lengths, max_tokens, seed=0):
    """fairseq's batching: indices sorted by size (descending, random tie-break), then batch_by_size."""
    rng = np.random.default_rng(seed)
    sizes = np.asarray(lengths, dtype=np.int64)
    order = np.lexsort([rng.permutation(len(sizes)), sizes])[::-1].copy()
    batches = data_utils.batch_by_size(order, num_tokens_fn=None, num_tokens_vec=sizes[order], max_tokens=max_tokens,
                                       required_batch_size_multiple=1)
    return [[int(i) for i in b] for b in batches]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--bench", choices=["train", "eval"], required=True)
    p.add_argument("--impl", choices=["ours", "hf"], required=True)
    p.add_argument("--size", default="tiny", choices=["tiny", "base"])
    p.add_argument("--utterances", type=int, default=48)
    p.add_argument("--per-update", type=int, default=16, help="utterances per update (batch-1 mode: update_freq)")
    p.add_argument("--bucket-update-freq", type=int, default=4,
                   help="bucketed mode: update_freq; max_tokens = per_update / this x mean length, so an update "
                        "holds per_update utterances on average")
    p.add_argument("--max-tokens", default="", help="comma-separated max_tokens values (default: train 4 x mean "
                                                   "length; eval 512000,1400000,2800000)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)

    lengths = slue_like_lengths(a.utterances, seed=0)
    model = build(a.impl, a.size, dropout=0.0, device=a.device, dtype=a.dtype)
    dtype = DTYPES[a.dtype]
    labels = torch.from_numpy(np.random.default_rng(1).integers(0, 3, len(lengths)))
    if a.max_tokens:
        max_tokens = [int(x) for x in a.max_tokens.split(",")]
    elif a.bench == "train":
        max_tokens = [int(a.per_update / a.bucket_update_freq * np.mean(lengths))]
    else:
        max_tokens = [512_000, 1_400_000, 2_800_000]
    singles = [[i] for i in np.random.default_rng(2).permutation(len(lengths)).tolist()]
    result = {"bench": a.bench, "impl": a.impl, "size": a.size, "device": a.device, "dtype": a.dtype,
              "threads": torch.get_num_threads(), "utterances": len(lengths),
              "mean_s": round(float(np.mean(lengths)) / 16000, 2), "max_s": round(max(lengths) / 16000, 2),
              "bucketed": []}
    modes = [("batch1", singles, a.per_update, None)]
    for mt in max_tokens:
        buckets = bucketed(lengths, mt)
        modes.append((f"max_tokens={mt}", buckets, a.bucket_update_freq, {
            "max_tokens": mt, "n_batches": len(buckets), "mean_batch": round(len(lengths) / len(buckets), 2),
            "padding_fraction": round(1 - sum(lengths) / sum(len(b) * max(lengths[i] for i in b) for b in buckets),
                                      4)}))

    def run_batch(batch):
        source, pad = synthetic_batch([lengths[i] for i in batch], a.device, dtype, seed=batch[0])
        return model(source, pad)

    if a.bench == "train":
        model.train()
        opt = torch.optim.Adam([q for q in model.parameters() if q.requires_grad], lr=1e-5)

        def epoch(batches, update_freq):
            n_updates = 0
            for start in range(0, len(batches), update_freq):
                for batch in batches[start:start + update_freq]:
                    logits = run_batch(batch)
                    F.cross_entropy(logits.float(), labels[batch].to(a.device), reduction="sum").backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                n_updates += 1
            return n_updates

        run_batch(modes[-1][1][-1]).sum().backward()  # warm-up (allocator, kernels) on the shortest bucket
        opt.zero_grad(set_to_none=True)
        for name, batches, freq, info in modes:
            sync()
            t = time.perf_counter()
            n_updates = epoch(batches, freq)
            sync()
            dt = time.perf_counter() - t
            row = {"seconds": round(dt, 2), "utt_per_s": round(len(lengths) / dt, 3), "update_freq": freq,
                   "updates": n_updates, "utt_per_update": round(len(lengths) / n_updates, 2)}
            add_row(result, name, row, info)
    else:
        model.eval()
        logits = {}
        with torch.no_grad():
            run_batch(modes[-1][1][-1])  # warm-up
            for name, batches, _, info in modes:
                sync()
                t = time.perf_counter()
                out = {}
                for batch in batches:
                    for i, row in zip(batch, run_batch(batch).float().cpu()):
                        out[i] = row
                sync()
                dt = time.perf_counter() - t
                logits[name] = torch.stack([out[i] for i in range(len(lengths))])
                row = {"seconds": round(dt, 2), "utt_per_s": round(len(lengths) / dt, 3)}
                if info is not None:
                    diff = (logits["batch1"] - logits[name]).abs().max().item()
                    row["max_abs_logit_diff"] = round(diff, 6)
                    row["max_rel_logit_diff"] = round(diff / max(logits["batch1"].abs().max().item(), 1e-12), 6)
                    row["argmax_agreement"] = round(
                        (logits["batch1"].argmax(-1) == logits[name].argmax(-1)).float().mean().item(), 4)
                add_row(result, name, row, info)
    return result


def add_row(result, name, row, info):
    if info is None:
        result["batch1"] = row
    else:
        row.update(info)
        row["speedup_vs_batch1"] = round(row["utt_per_s"] / result["batch1"]["utt_per_s"], 3)
        result["bucketed"].append(row)


if __name__ == "__main__":
    print(json.dumps(main()), flush=True)
