"""Cost of each model.classifier head relative to decoder_query, measured in one run (docs/methods/classifier_heads.md).

    .venv/bin/python -m benchmarks.classifier_heads                  # speecht5_base dims, CPU, ~3 min
    .venv/bin/python -m benchmarks.classifier_heads --size tiny --repeats 5
    .venv/bin/python -m benchmarks.classifier_heads --device cuda --json heads.json

For every head: parameter counts (whole model, and the classifier part: decoder + pooler + class projection), and
the wall time of an s2c and a t2c evaluation forward (eval, no_grad) and training step (train mode, forward +
backward of the summed logits; dropout and layerdrop off). The heads are measured round-robin, `--repeats` rounds,
and the minimum per head is kept, so slow phases of a shared machine hit every head alike; only the ratios to
decoder_query from the same run are meant to be compared, not the absolute times.
"""
import argparse
import json
import time

import torch

from benchmarks import common

HEADS = ("decoder_query", "encoder_mean", "encoder_attentive", "layer_weighted")


def build(kind: str, size: str, device: str):
    from fairseq_xmodal.models.speecht5 import SpeechT5Classifier

    cfg = common.our_config(size)
    cfg.classifier = kind
    torch.manual_seed(0)
    return SpeechT5Classifier(cfg, text_vocab_size=81, text_padding_idx=1, num_classes=common.NUM_CLASSES).to(device)


def classifier_parameters(model) -> int:
    parts = [model.pooler, model.speaker_decoder_postnet] + ([model.decoder] if model.decoder is not None else [])
    return sum(p.numel() for m in parts for p in m.parameters())


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="base", choices=["base", "tiny"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seconds", type=float, default=4.0, help="s2c: audio length of each utterance (default 4 s)")
    p.add_argument("--batch", type=int, default=2, help="utterances / transcripts per batch (default 2)")
    p.add_argument("--tokens", type=int, default=120, help="t2c: characters per transcript (default 120)")
    p.add_argument("--repeats", type=int, default=3, help="round-robin rounds; the minimum is kept (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    models = {kind: build(kind, args.size, args.device) for kind in HEADS}
    lengths = [int(args.seconds * common.SAMPLE_RATE)] * args.batch
    source, pad = common.synthetic_batch(lengths, device=args.device)
    tokens = torch.randint(4, 81, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0)).to(args.device)
    inputs = {"s2c": {"source": source, "padding_mask": pad}, "t2c": {"src_tokens": tokens}}

    def evaluate(model, net_input):
        model.eval()
        with torch.no_grad():
            model(**net_input)

    def train(model, net_input):
        model.train()
        model.zero_grad(set_to_none=True)
        model(**net_input).float().sum().backward()

    times = {(kind, task, mode): [] for kind in HEADS for task in inputs for mode in ("eval", "train")}
    for kind in HEADS:  # warm-up: first calls allocate and pick kernels
        for task, net_input in inputs.items():
            evaluate(models[kind], net_input)
            train(models[kind], net_input)
    for _ in range(args.repeats):
        for kind in HEADS:
            for task, net_input in inputs.items():
                for mode, fn in (("eval", evaluate), ("train", train)):
                    times[kind, task, mode].append(timed(lambda: fn(models[kind], net_input), args.device))
    best = {k: min(v) for k, v in times.items()}

    rows = []
    for kind in HEADS:
        m = models[kind]
        row = {"classifier": kind, "parameters": sum(p.numel() for p in m.parameters()),
               "classifier_parameters": classifier_parameters(m)}
        for task in inputs:
            for mode in ("eval", "train"):
                row[f"{task}_{mode}_s"] = round(best[kind, task, mode], 4)
                row[f"{task}_{mode}_ratio"] = round(best[kind, task, mode] / best["decoder_query", task, mode], 3)
                # the same ratio round by round (each round runs every head once, back to back): its spread says
                # how much the machine's load moved the headline ratio
                per_round = [t / ref for t, ref in zip(times[kind, task, mode], times["decoder_query", task, mode])]
                row[f"{task}_{mode}_round_ratios"] = [round(r, 3) for r in per_round]
        rows.append(row)

    print(f"model.classifier cost, speecht5_{args.size} dims, {args.device}, batch {args.batch}: s2c {args.seconds:g} s "
          f"audio, t2c {args.tokens} characters; minimum of {args.repeats} round-robin rounds; ratio = time / "
          f"decoder_query's in this run [range of the per-round ratios]")
    cols = [f"{t}_{m}" for t in inputs for m in ("eval", "train")]
    print(f"  {'classifier':18s} {'params':>11s} {'classifier':>11s} | " + " ".join(f"{c:>20s}" for c in cols))
    for r in rows:
        cells = [f"{r[c + '_ratio']:.3f}x [{min(r[c + '_round_ratios']):.2f}-{max(r[c + '_round_ratios']):.2f}]"
                 for c in cols]
        print(f"  {r['classifier']:18s} {r['parameters']:11,d} {r['classifier_parameters']:11,d} | "
              + " ".join(f"{c:>20s}" for c in cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "machine": common.machine_info(), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
