"""xmodal-import-official: official SpeechT5 checkpoint (pretrain or SID) -> fairseq_xmodal checkpoint for s2c/t2c.

The result works with `checkpoint.finetune_from_model=` and `fairseq.checkpoint_utils.load_model_ensemble_and_task`.
A report of loaded / ignored / newly initialised keys is printed and written to <out>.import.json."""
import argparse
import sys

from ..checkpoints import atomic_write_json
from ..models.heads import CLASSIFIERS
from ..models.official import import_official


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--checkpoint", required=True, help="official speecht5_base.pt or a SID fine-tuned checkpoint")
    p.add_argument("--task", required=True, choices=["s2c", "t2c"])
    p.add_argument("--data", required=True, help="data folder (dict.txt, labels.sent.txt; docs/data_format.md)")
    p.add_argument("--out", required=True, help="output checkpoint path")
    p.add_argument("--sid-dict", default=None, help="SID checkpoints: the label dict.txt they were fine-tuned with")
    p.add_argument("--text-prenet-from", default=None,
                   help="SID checkpoints: take the 81-symbol text prenet from this pretrain checkpoint")
    p.add_argument("--classifier", default="decoder_query", choices=CLASSIFIERS,
                   help="model.classifier of the result (docs/methods/classifier_heads.md); the encoder heads leave "
                        "the official decoder out (reported as ignored) and start with a new class head")
    args = p.parse_args(argv)
    overrides = {"classifier": args.classifier} if args.classifier != "decoder_query" else None
    try:
        report = import_official(args.checkpoint, args.task, args.data, args.out, sid_dict=args.sid_dict,
                                 text_prenet_from=args.text_prenet_from, model_overrides=overrides)
    except (ValueError, FileNotFoundError) as e:
        print(f"xmodal-import-official: error: {e}", file=sys.stderr)
        return 2
    report.print()
    atomic_write_json(dict(report), args.out + ".import.json")
    print(f"wrote {args.out} and {args.out}.import.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
