"""xmodal-make-official-checkpoint: a random SpeechT5 checkpoint in the exact official format, with its vocabulary.

Stands in for speecht5_base.pt wherever the real weights cannot be downloaded (tests, the demo, CI)."""
import argparse
import os
import sys

from .. import console
from ..models.official import write_official_checkpoint
from ..models.speecht5 import SpeechT5Config, SpeechT5TinyConfig
from ..text_vocab import make_char_vocab
from .errors import console_main, refuse_existing

SIZES = {"base": SpeechT5Config, "tiny": SpeechT5TinyConfig}


@console_main("xmodal-make-official-checkpoint")
def main(argv=None):
    p = argparse.ArgumentParser(prog="xmodal-make-official-checkpoint", description=__doc__)
    p.add_argument("--out", dest="out_dir", required=True, metavar="DIR",
                   help="folder to write <name>, spm_char.model and dict.txt into")
    p.add_argument("--size", choices=sorted(SIZES), default="tiny", help="model dimensions")
    p.add_argument("--name", default="speecht5_base.pt", help="checkpoint file name")
    p.add_argument("--seed", type=int, default=1, help="seed of the random weights (default 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint of that name")
    p.add_argument("--sid-labels", default=None,
                   help="comma-separated labels: write an official SID (s2c) fine-tuned checkpoint instead, plus its "
                        "label dict as sid_dict.txt")
    console.add_verbose(p)
    args = p.parse_args(argv)
    refuse_existing(os.path.join(args.out_dir, args.name), args.overwrite, option="--out/--name")
    os.makedirs(args.out_dir, exist_ok=True)
    spm_path, dict_path = make_char_vocab(args.out_dir)
    labels = args.sid_labels.split(",") if args.sid_labels else None
    path = os.path.join(args.out_dir, args.name)
    write_official_checkpoint(path, SIZES[args.size](), seed=args.seed, sid_labels=labels)
    if labels:
        with open(os.path.join(args.out_dir, "sid_dict.txt"), "w") as f:
            f.writelines(f"{label} 1\n" for label in labels)
    print(f"wrote {path} ({args.size}{', SID' if labels else ''}), {spm_path}, {dict_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
