"""xmodal-evaluate: score a fairseq_xmodal checkpoint under s2c (audio) or t2c (transcripts) on one split.

The checkpoint's own task does not matter: an s2c checkpoint on --task t2c (or the reverse) is zero-shot
cross-modal evaluation. Deterministic, full-length, every row predicted once. Writes predictions.tsv and metrics.json
(SLUE macro P/R/F1 over the fixed label set, zero_division=0; --legacy-metrics makes the prior system's numbers the
headline). See docs/transfer_and_evaluation.md."""
import argparse
import os
import sys

from ..evaluation.evaluate import EvalConfig, evaluate, summary_line
from .transfer import parse_task_args
from .errors import EXPECTED, console_main, one_line


def default_out_dir(checkpoint: str, task: str, split: str, data: str) -> str:
    stem = os.path.splitext(os.path.basename(checkpoint))[0]
    return os.path.join(os.path.dirname(os.path.abspath(checkpoint)), "eval",
                        f"{stem}.{task}.{os.path.basename(os.path.normpath(data))}.{split}")


@console_main("xmodal-evaluate")
def main(argv=None):
    p = argparse.ArgumentParser(prog="xmodal-evaluate", description=__doc__)
    p.add_argument("--checkpoint", required=True, help="fairseq_xmodal checkpoint (trained, transferred or imported)")
    p.add_argument("--task", required=True, choices=["s2c", "t2c"], help="evaluate on audio (s2c) or text (t2c)")
    p.add_argument("--data", required=True, help="data folder")
    p.add_argument("--split", default="valid", help="split name, e.g. valid, dev, test, train.k8 (default: valid)")
    p.add_argument("--out-dir", default=None,
                   help="output folder (default: <checkpoint dir>/eval/<stem>.<task>.<data name>.<split>)")
    p.add_argument("--batch-size", type=int, default=8, help="utterances per batch (default 8)")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="batch limit in samples (s2c) or tokens (t2c); a longer row is an error, never dropped")
    p.add_argument("--legacy-metrics", action="store_true",
                   help="headline numbers as the prior system computed them (zero_division=1, no fixed labels)")
    p.add_argument("--cpu", action="store_true", help="do not use a GPU even if there is one")
    p.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="task config field, e.g. sentencepiece_model=/path/spm_char.model")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out-dir")
    args = p.parse_args(argv)
    out_dir = args.out_dir or default_out_dir(args.checkpoint, args.task, args.split, args.data)
    try:
        m = evaluate(EvalConfig(checkpoint=args.checkpoint, task=args.task, data=args.data, split=args.split,
                                out_dir=out_dir, batch_size=args.batch_size, max_tokens=args.max_tokens,
                                legacy_metrics=args.legacy_metrics, cpu=args.cpu,
                                task_overrides=parse_task_args(args.task_arg), overwrite=args.overwrite))
    except EXPECTED as e:
        print(f"xmodal-evaluate: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(summary_line(m))
    for w in m["warnings"]:
        print(f"WARNING: {w}")
    print(f"wrote {os.path.join(out_dir, 'predictions.tsv')} and {os.path.join(out_dir, 'metrics.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
