"""xmodal-probe: how much knowledge of one modality survives fine-tuning on the other (MoNA-style linear probe).

Pooled features of the probed input path (--modality speech = audio through the s2c path, text = transcripts through
the t2c path) of the frozen --checkpoint train a standardised logistic regression on --train-split; its SLUE
macro-F1 on --eval-split (or on a seeded, stratified --holdout fraction of the train split) is reported next to the
same probe on --reference (e.g. the pretrained init imported from speecht5_base.pt, or speecht5_base.pt itself), with
delta = checkpoint - reference and majority / uniform-random baselines. Writes <out>/probe.json.
See docs/methods/probe.md."""
import argparse
import os
import sys

from .. import console
from ..safe_load import add_allow_pickle_flag, allow_full_pickle
from .errors import EXPECTED, console_main, one_line


@console_main("xmodal-probe")
def main(argv=None):
    p = argparse.ArgumentParser(prog="xmodal-probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="fine-tuned fairseq_xmodal checkpoint to probe")
    p.add_argument("--modality", required=True, choices=["speech", "text"],
                   help="input path probed: speech (audio, s2c task) or text (transcripts, t2c task)")
    p.add_argument("--data", required=True, help="labelled data folder (docs/data_format.md)")
    p.add_argument("--reference", default=None,
                   help="checkpoint probed the same way for comparison (fairseq_xmodal, or official SpeechT5 "
                        "imported on the fly), e.g. the init the checkpoint was fine-tuned from")
    p.add_argument("--features", default="encoder_mean", choices=["encoder_mean", "decoder", "classifier"],
                   help="encoder_mean: masked mean of the encoder output (default); decoder: decoder output of "
                        "the all-zero query; classifier: what the model's class head reads (model.classifier)")
    p.add_argument("--train-split", default="train", help="split the probe is fitted on (default: train)")
    p.add_argument("--eval-split", default=None, help="split the probe is scored on (default: valid)")
    p.add_argument("--holdout", type=float, default=None, metavar="FRACTION",
                   help="instead of --eval-split: hold out this stratified, seeded fraction of --train-split")
    p.add_argument("--seed", type=int, default=1, help="probe and holdout seed (default 1)")
    p.add_argument("--class-weight", default="none", choices=["none", "balanced"],
                   help="logistic regression class weights (default none)")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the probe (default 1.0)")
    p.add_argument("--max-iter", type=int, default=5000, help="lbfgs iterations (default 5000)")
    p.add_argument("--batch-size", type=int, default=8, help="utterances per feature-extraction batch (default 8)")
    p.add_argument("--max-tokens", type=int, default=None, help="batch limit in samples (speech) or tokens (text)")
    p.add_argument("--cpu", action="store_true", help="do not use a GPU even if there is one")
    p.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="task config field, e.g. sentencepiece_model=/path/spm_char.model")
    p.add_argument("--out", dest="out_dir", required=True, metavar="DIR", help="output folder for probe.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing probe.json in --out")
    console.add_verbose(p)
    add_allow_pickle_flag(p)
    args = p.parse_args(argv)
    allow_full_pickle(args.allow_pickle)
    out_dir = args.out_dir

    from ..evaluation.probe import ProbeConfig, probe, table_lines
    from .transfer import parse_task_args

    try:
        r = probe(ProbeConfig(checkpoint=args.checkpoint, modality=args.modality, data=args.data, out_dir=out_dir,
                              reference=args.reference, train_split=args.train_split, eval_split=args.eval_split,
                              holdout=args.holdout, features=args.features, seed=args.seed,
                              class_weight=args.class_weight, C=args.C, max_iter=args.max_iter,
                              batch_size=args.batch_size, max_tokens=args.max_tokens, cpu=args.cpu,
                              task_overrides=parse_task_args(args.task_arg), overwrite=args.overwrite))
    except EXPECTED as e:
        print(f"xmodal-probe: error: {one_line(e)}", file=sys.stderr)
        return 2
    print("\n".join(table_lines(r)))
    for w in r["warnings"]:
        print(f"WARNING: {w}")
    print(f"wrote {os.path.join(out_dir, 'probe.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
