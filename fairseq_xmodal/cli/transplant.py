"""xmodal-prepare-transplants: the initialisation checkpoints of the layer transplant grid, one xmodal-transfer each.

For every layer set (default first, middle, last, all of --group) and every init (default transferred,
xavier_uniform) it writes <out>/<layers>.<init>.pt (+ .transfer.json): the --base checkpoint (usually the target
task's pretrained init from xmodal-import-official) with those layers replaced:

  transferred      the layers come from --source (the other modality's fine-tuned model)
  xavier_uniform   the layers are re-initialised (any registered init strategy: xavier_normal, model, ...)

Everything else comes from --base, in every file, so two files of one layer set differ only in those layers.
Named layer sets: first = 0, middle = L // 2, last = L - 1, all (selectors.py, as model.freeze resolves
encoder.layers.middle); each file's selector is written with the resolved indices (encoder.layers.1).
<out>/transplants.json lists the files with their layer indices. Then train the grid (sweep/transplanted=frozen
freezes the layers each file's .transfer.json names):

  fairseq-hydra-train --multirun --config-dir config --config-name sweep_transplant task.data=DATA \
    checkpoint.finetune_from_model=$(ls DIR/*.pt | paste -sd,)

See docs/methods/layerwise_transfer.md."""
import argparse
import os
import sys
from typing import Dict, List, Optional

from ..checkpoints import load_state
from ..files import atomic_write_json, sha256
from ..modalities import TASKS
from ..progress import progress
from ..selectors import LAYERED, named_layers
from ..transfer import INIT_STRATEGIES, TransferError, TransferPlan, transfer
from .transfer import parse_task_args
from .. import console
from .errors import EXPECTED, console_main, one_line, refuse_existing

FORMAT = "fairseq_xmodal.transplants/1"
TRANSFERRED = "transferred"


def prepare(source: str, base: str, task: str, data: str, out_dir: str, group: str = "encoder",
            layer_sets: List[str] = ("first", "middle", "last", "all"),
            inits: List[str] = (TRANSFERRED, "xavier_uniform"), seed: int = 1,
            task_overrides: Optional[Dict] = None, overwrite: bool = False) -> Dict:
    """Write every (layer set, init) checkpoint and transplants.json; returns the manifest."""
    if group not in LAYERED:
        raise TransferError(f"--group {group!r}: choose {' or '.join(LAYERED)}")
    unknown = [i for i in inits if i != TRANSFERRED and i not in INIT_STRATEGIES]
    if unknown:
        raise TransferError(f"--inits {unknown}: use {TRANSFERRED} or an init strategy ({', '.join(INIT_STRATEGIES)})")
    model_cfg = load_state(os.path.abspath(source))["cfg"]["model"]
    n_layers = model_cfg.get(f"{group}_layers")
    if not n_layers:
        raise TransferError(f"{source}: its cfg.model has no {group}_layers")
    sets = {}
    for name in layer_sets:
        try:
            sets[name] = named_layers(name, int(n_layers), f"--layers {name}")
        except ValueError as e:
            raise TransferError(str(e)) from None
    jobs = [(name, idx, init) for name, idx in sets.items() for init in inits]
    # the output rule for every file before the first is written: a refusal at the third checkpoint would leave a
    # partial grid, and transplants.json (no transfer guards it) would replace another grid's manifest unasked
    outs = [os.path.join(out_dir, f"{name}.{init}.pt") for name, _, init in jobs]
    for path in outs + [f"{o}.transfer.json" for o in outs] + [os.path.join(out_dir, "transplants.json")]:
        refuse_existing(path, overwrite, (source, base))
    os.makedirs(out_dir, exist_ok=True)
    files = {}
    for name, idx, init in progress(jobs, len(jobs), "transplants", unit="checkpoint"):
        selector = f"{group}.layers.{','.join(map(str, idx))}"  # the indices, as resolved for the manifest
        out = os.path.abspath(os.path.join(out_dir, f"{name}.{init}.pt"))
        chosen = dict(take=[selector]) if init == TRANSFERRED else dict(reinit=[selector], init=init)
        report = transfer(TransferPlan(source=source, task=task, data=data, out=out, modality_from=base,
                                       rest="modality", seed=seed, task_overrides=dict(task_overrides or {}),
                                       overwrite=overwrite, **chosen))
        files[f"{name}.{init}"] = {"path": out, "layer_set": name, "layers": idx, "init": init,
                                   "selector": selector, "counts": report.counts}
    manifest = {"format": FORMAT, "task": task, "data": os.path.abspath(data), "group": group,
                "n_layers": int(n_layers), "layer_sets": sets, "inits": list(inits), "seed": seed,
                "source": {"path": os.path.abspath(source), "sha256": sha256(source)},
                "base": {"path": os.path.abspath(base), "sha256": sha256(base)}, "files": files}
    atomic_write_json(manifest, os.path.join(out_dir, "transplants.json"))
    return manifest


@console_main("xmodal-prepare-transplants")
def main(argv=None):
    p = argparse.ArgumentParser(prog="xmodal-prepare-transplants", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, help="checkpoint the transferred layers come from (other modality)")
    p.add_argument("--base", required=True,
                   help="fairseq_xmodal checkpoint everything else comes from (e.g. the target task's imported init)")
    p.add_argument("--task", required=True, choices=TASKS, help="target task")
    p.add_argument("--data", required=True, help="target data folder")
    p.add_argument("--out", dest="out_dir", required=True, metavar="DIR",
                   help="folder for <layers>.<init>.pt and transplants.json")
    p.add_argument("--group", default="encoder", choices=list(LAYERED), help="whose layers (default encoder)")
    p.add_argument("--layers", default="first,middle,last,all",
                   help="layer sets: first, middle, last, all, an index I or a range I-J (comma list)")
    p.add_argument("--inits", default=f"{TRANSFERRED},xavier_uniform",
                   help=f"{TRANSFERRED} and/or init strategies ({', '.join(sorted(INIT_STRATEGIES))}), comma list")
    p.add_argument("--seed", type=int, default=1, help="seed of every re-initialisation (recorded)")
    p.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE", help="target task config field")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    console.add_verbose(p)
    args = p.parse_args(argv)
    try:
        manifest = prepare(args.source, args.base, args.task, args.data, args.out_dir, args.group,
                           [s for s in args.layers.split(",") if s], [s for s in args.inits.split(",") if s],
                           args.seed, parse_task_args(args.task_arg), args.overwrite)
    except EXPECTED as e:
        print(f"xmodal-prepare-transplants: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"{len(manifest['files'])} checkpoints in {os.path.abspath(args.out_dir)} "
          f"({manifest['group']}: {manifest['n_layers']} layers):")
    for name, f in manifest["files"].items():
        print(f"  {name + '.pt':28s} {f['selector']:24s} {f['init']}")
    paths = ",".join(f["path"] for f in manifest["files"].values())
    print(f"train the grid:\n  fairseq-hydra-train --multirun --config-dir config --config-name sweep_transplant "
          f"task.data={manifest['data']} checkpoint.finetune_from_model={paths}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
