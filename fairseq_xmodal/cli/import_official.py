"""xmodal-import-official: official SpeechT5 weights -> fairseq_xmodal checkpoint for s2c/t2c.

--checkpoint is an official fairseq checkpoint (speecht5_base.pt, or a SID fine-tuned one) or a transformers-format
SpeechT5 folder (config.json + model.safetensors, e.g. microsoft/speecht5_asr saved locally; nothing is downloaded).
The result works with `checkpoint.finetune_from_model=` and `fairseq.checkpoint_utils.load_model_ensemble_and_task`.
A report of loaded / ignored / newly initialised keys is printed and written to <out>.import.json. Newly initialised
keys (the class head) are drawn with --seed (recorded), so the same import gives the same file."""
import argparse
import os
import sys

from .. import console
from ..files import atomic_write_json
from ..models.heads import CLASSIFIERS
from ..models.hf import import_hf_folder, is_hf_folder
from ..models.official import import_official
from ..safe_load import add_allow_pickle_flag, allow_full_pickle
from .errors import console_main, refuse_existing


@console_main("xmodal-import-official")
def main(argv=None):
    p = argparse.ArgumentParser(prog="xmodal-import-official", description=__doc__)
    p.add_argument("--checkpoint", required=True,
                   help="official speecht5_base.pt, a SID fine-tuned checkpoint, or an HF SpeechT5 folder")
    p.add_argument("--task", required=True, choices=["s2c", "t2c"],
                   help="task of the result: s2c (speech) or t2c (text)")
    p.add_argument("--data", required=True, help="data folder (dict.txt, labels.sent.txt; docs/data_format.md)")
    p.add_argument("--out", required=True, help="output checkpoint path (never the input)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out (and its .import.json)")
    p.add_argument("--seed", type=int, default=1,
                   help="seed of the newly initialised keys, e.g. the class head (default 1; recorded)")
    p.add_argument("--sid-dict", default=None, help="SID checkpoints: the label dict.txt they were fine-tuned with")
    p.add_argument("--text-prenet-from", default=None,
                   help="SID checkpoints: take the 81-symbol text prenet from this pretrain checkpoint")
    p.add_argument("--classifier", default="decoder_query", choices=CLASSIFIERS,
                   help="model.classifier of the result (docs/methods/classifier_heads.md); the encoder heads leave "
                        "the official decoder out (reported as ignored) and start with a new class head")
    add_allow_pickle_flag(p)
    console.add_verbose(p)
    args = p.parse_args(argv)
    allow_full_pickle(args.allow_pickle)
    overrides = {"classifier": args.classifier} if args.classifier != "decoder_query" else None
    sidecar = args.out + ".import.json"
    inputs = [args.checkpoint, args.sid_dict, args.text_prenet_from]
    if is_hf_folder(args.checkpoint):  # a transformers folder is read through its two files: both are inputs
        inputs += [os.path.join(args.checkpoint, n) for n in ("config.json", "model.safetensors")]
    refuse_existing(args.out, args.overwrite, inputs)
    refuse_existing(sidecar, args.overwrite, inputs)
    if os.path.isdir(args.checkpoint) and not is_hf_folder(args.checkpoint):
        raise ValueError(f"--checkpoint {args.checkpoint} is a folder without config.json + model.safetensors; give "
                         f"an official .pt file or a transformers SpeechT5 folder (save_pretrained)")
    if is_hf_folder(args.checkpoint):
        report = import_hf_folder(args.checkpoint, args.task, args.data, args.out, seed=args.seed,
                                  model_overrides=overrides)
    else:
        report = import_official(args.checkpoint, args.task, args.data, args.out, sid_dict=args.sid_dict,
                                 text_prenet_from=args.text_prenet_from, seed=args.seed,
                                 model_overrides=overrides)
    report.print()
    atomic_write_json(dict(report), sidecar)
    print(f"wrote {args.out} and {sidecar}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
