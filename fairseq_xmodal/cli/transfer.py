"""xmodal-transfer: turn an s2c checkpoint into a t2c checkpoint (or back), accounting for every parameter.

Every key of the target model comes from exactly one place: the source checkpoint (--take), a second "modality"
checkpoint (--keep, needs --modality-from; an official SpeechT5 checkpoint is imported on the fly), or a seeded
re-initialisation (--reinit). Selectors (the grammar of model.freeze, fairseq_xmodal/selectors.py): all, prenet (the
target task's), speech_prenet, text_prenet, encoder, decoder, head, pooler, encoder.layers.0,5 / decoder.layers.0-2 /
encoder.layers.last (layers), encoder.rest (encoder keys outside its layers).
The most specific selector wins. Without --take everything not kept or re-initialised comes from the source; with
--take, say where the rest comes from with --rest. Class or text dictionary mismatches and shape mismatches are errors.

Writes <out> (loads with checkpoint.finetune_from_model= and load_model_ensemble_and_task under the target task)
and <out>.transfer.json (the accounting). See docs/transfer_and_evaluation.md."""
import argparse
import sys

from omegaconf import OmegaConf

from ..modalities import TASKS
from ..models.heads import CLASSIFIERS
from ..transfer import INIT_STRATEGIES, ORIGINS, TransferPlan, transfer
from .. import console
from .errors import EXPECTED, console_main, one_line


def parse_task_args(items):
    """`key=value` strings -> typed dict (OmegaConf dotlist parsing: 1 -> int, true -> bool)."""
    bad = [i for i in items if "=" not in i]
    if bad:
        raise ValueError(f"--task-arg needs key=value, got {bad}")
    return OmegaConf.to_container(OmegaConf.from_dotlist(list(items)))


@console_main("xmodal-transfer")
def main(argv=None):
    p = argparse.ArgumentParser(prog="xmodal-transfer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="fairseq_xmodal checkpoint to transfer (e.g. a checkpoint_best.pt)")
    p.add_argument("--task", required=True, choices=TASKS, help="target task")
    p.add_argument("--data", required=True, help="target data folder (labels.sent.txt, dict.txt)")
    p.add_argument("--out", required=True, help="output checkpoint")
    p.add_argument("--modality-from", default=None,
                   help="checkpoint for --keep (fairseq_xmodal, or official SpeechT5, imported on the fly); "
                        "without --keep its target-modality prenet is kept")
    p.add_argument("--take", action="append", default=[], metavar="SEL", help="take these keys from --source")
    p.add_argument("--keep", action="append", default=[], metavar="SEL", help="take these keys from --modality-from")
    p.add_argument("--reinit", action="append", default=[], metavar="SEL", help="re-initialise these keys (--init)")
    p.add_argument("--rest", choices=ORIGINS, default=None,
                   help="origin of keys no selector names (default: source, but required when --take is given)")
    p.add_argument("--init", default="model", choices=sorted(INIT_STRATEGIES), help="re-initialisation strategy")
    p.add_argument("--seed", type=int, default=1, help="seed of the re-initialisation (recorded)")
    p.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="target task config field, e.g. text_dictionary=/path/dict.txt")
    p.add_argument("--classifier", default=None, choices=CLASSIFIERS,
                   help="model.classifier of the target (default: the source's); a different one needs its head "
                        "re-initialised: --reinit head (and pooler where it has parameters)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    console.add_verbose(p)
    args = p.parse_args(argv)
    try:
        plan = TransferPlan(source=args.source, task=args.task, data=args.data, out=args.out,
                            modality_from=args.modality_from, take=args.take, keep=args.keep, reinit=args.reinit,
                            rest=args.rest, init=args.init, seed=args.seed,
                            task_overrides=parse_task_args(args.task_arg), overwrite=args.overwrite,
                            classifier=args.classifier)
        report = transfer(plan)
    except EXPECTED as e:
        print(f"xmodal-transfer: error: {one_line(e)}", file=sys.stderr)
        return 2
    print("\n".join(report.summary_lines()))
    print(f"wrote {report.out} and {report.out}.transfer.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
