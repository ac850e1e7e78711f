"""xmodal-evaluate: score a fairseq_xmodal checkpoint under s2c (audio) or t2c (transcripts) on one split.

The checkpoint's own task does not matter: an s2c checkpoint on --task t2c (or the reverse) is zero-shot
cross-modal evaluation. Deterministic, full-length, every row predicted once. Writes predictions.tsv and metrics.json
(SLUE macro P/R/F1 over the fixed label set, zero_division=0; --legacy-metrics makes the prior system's numbers the
headline). A long split in parallel: `--shard i/n` in n processes, then `--merge <their out dirs> --out <dir>`
writes exactly what one unsharded run writes. See docs/transfer_and_evaluation.md."""
import argparse
import os
import sys

from .. import console
from ..evaluation.evaluate import EvalConfig, evaluate_checkpoint, summary_line
from ..evaluation import retrieval
from ..evaluation.shards import merge, parse_shard
from ..safe_load import add_allow_pickle_flag, allow_full_pickle
from .transfer import parse_task_args
from .errors import EXPECTED, console_main, one_line


@console_main("xmodal-evaluate")
def main(argv=None):
    p = argparse.ArgumentParser(prog="xmodal-evaluate", description=__doc__)
    p.add_argument("--checkpoint", help="fairseq_xmodal checkpoint (trained, transferred or imported)")
    p.add_argument("--task", choices=["s2c", "t2c"], help="evaluate on audio (s2c) or text (t2c)")
    p.add_argument("--data", help="data folder")
    p.add_argument("--split", default="valid", help="split name, e.g. valid, dev, test, train.k8 (default: valid)")
    p.add_argument("--out", dest="out_dir", required=True, metavar="DIR",
                   help="output folder for predictions.tsv and metrics.json (of a shard, with --shard)")
    p.add_argument("--batch-size", type=int, default=8, help="utterances per batch (default 8)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="batch limit in samples (s2c) or tokens (t2c); a longer row is an error, never dropped")
    p.add_argument("--legacy-metrics", action="store_true",
                   help="headline numbers as the prior system computed them (zero_division=1, no fixed labels)")
    p.add_argument("--cpu", action="store_true", help="do not use a GPU even if there is one")
    p.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="task config field, e.g. sentencepiece_model=/path/spm_char.model")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="score only shard I of N (every N-th batch from the I-th); merge the N out dirs with --merge")
    p.add_argument("--merge", nargs="+", default=None, metavar="SHARD_DIR",
                   help="merge the out dirs of all N shards of one evaluation into --out (nothing else needed)")
    p.add_argument("--ci-level", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples of the utterances for the intervals (default 1000)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the resampling (default 0; recorded)")
    p.add_argument("--majority-threshold", type=float, default=EvalConfig.majority_threshold, metavar="FRACTION",
                   help="warn (metrics.json `single_label`) when at least this fraction of the predictions is one "
                        f"label (default {EvalConfig.majority_threshold})")
    add_allow_pickle_flag(p)
    console.add_verbose(p)
    p.add_argument("--retrieval", action="store_true",
                   help="instead of classifying: speech<->text retrieval on the paired split (recall@1/@5, mean rank, "
                        "chance) -> retrieval.json (evaluation/retrieval.py; --task is not needed)")
    p.add_argument("--features", default="encoder_mean", choices=["encoder_mean", "decoder", "classifier"],
                   help="--retrieval: the pooled representation compared (default encoder_mean)")
    args = p.parse_args(argv)
    allow_full_pickle(args.allow_pickle)
    if args.retrieval:
        return _retrieval(p, args)
    if args.merge is None and not (args.checkpoint and args.task and args.data):
        p.error("--checkpoint, --task and --data are required (or --merge SHARD_DIR... --out DIR)")
    try:
        if args.merge is not None:
            m = merge(args.merge, args.out_dir, overwrite=args.overwrite)
            out_dir = args.out_dir
        else:
            shard = parse_shard(args.shard) if args.shard else None
            out_dir = args.out_dir
            cfg = EvalConfig(checkpoint=args.checkpoint, task=args.task, data=args.data, split=args.split,
                             out_dir=out_dir, batch_size=args.batch_size, max_tokens=args.max_tokens,
                             legacy_metrics=args.legacy_metrics, cpu=args.cpu,
                             task_overrides=parse_task_args(args.task_arg), overwrite=args.overwrite,
                             shard=shard, ci_level=args.ci_level, majority_threshold=args.majority_threshold,
                             bootstrap_resamples=args.bootstrap, bootstrap_seed=args.bootstrap_seed)
            m = evaluate_checkpoint(cfg)
    except EXPECTED as e:
        print(f"xmodal-evaluate: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(summary_line(m))
    for w in m["warnings"]:
        print(f"WARNING: {w}")
    print(f"wrote {os.path.join(out_dir, 'predictions.tsv')} and {os.path.join(out_dir, 'metrics.json')}")
    return 0


def _retrieval(p, args) -> int:
    if not (args.checkpoint and args.data):
        p.error("--retrieval needs --checkpoint and --data")
    out_dir = args.out_dir
    try:
        m = retrieval.retrieval(args.checkpoint, args.data, args.split, out_dir, args.features, args.batch_size,
                                args.overwrite, args.ci_level, args.bootstrap, args.bootstrap_seed)
    except EXPECTED as e:
        print(f"xmodal-evaluate: error: {one_line(e)}", file=sys.stderr)
        return 2
    print("\n".join(retrieval.summary_lines(m)))
    print(f"wrote {os.path.join(out_dir, 'retrieval.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
