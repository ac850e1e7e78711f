"""Where a checkpoint's weights came from, as one short label: the one rule, used by xmodal-evaluate/-probe (from a
checkpoint's own cfg and provenance) and by the report (from a training log's config).

  transferred   `transfer s2c->t2c of <run>/checkpoint_best.pt [take ...; reinit ... <init>]` (xmodal-transfer)
  imported      `official speecht5_base.pt` (xmodal-import-official)
  trained       the label of its init file: checkpoint.finetune_from_model, or else a restore_file other than
                checkpoint_last.pt (fairseq's resume file; another one, with resets, is an init too); `scratch` if none
Nothing in this module imports the rest of the package.
"""
import json
import os
from typing import Any, Dict, Optional


def describe_path(path: str) -> str:
    """`<run dir>/checkpoints/checkpoint_best.pt` -> `<run dir name>/checkpoint_best.pt`; else the base name."""
    parts = os.path.normpath(path).split(os.sep)
    return "/".join(parts[-3:-2] + parts[-1:]) if len(parts) >= 3 and parts[-2] == "checkpoints" else parts[-1]


def init_file(checkpoint_cfg: Optional[Dict[str, Any]]) -> Optional[str]:
    """The file a training run started from, from its cfg.checkpoint; None = from scratch."""
    ck = checkpoint_cfg or {}
    init = ck.get("finetune_from_model") or None
    restore = ck.get("restore_file")
    if not init and restore and os.path.basename(restore) != "checkpoint_last.pt":
        init = restore
    return init


def transfer_label(accounting: Dict[str, Any]) -> str:
    """`transfer s2c->t2c of <source>`, from a transfer's accounting (<out>.transfer.json or its provenance copy),
    with what it took and re-initialised where the plan is known."""
    plan = accounting.get("plan") or {}
    parts = ([f"take {','.join(plan['take'])}"] if plan.get("take") else []) + (
        [f"reinit {','.join(plan['reinit'])} {plan.get('init')}"] if plan.get("reinit") else [])
    return (f"transfer {accounting['source']['task']}->{accounting['target']['task']} of "
            f"{describe_path(accounting['source']['path'])}" + (f" [{'; '.join(parts)}]" if parts else ""))


def describe_init_file(path: Optional[str]) -> str:
    """The label of an init file, from its xmodal-transfer / import sidecar if present; `scratch` for None."""
    if not path:
        return "scratch"
    for suffix, kind in ((".transfer.json", "transfer"), (".import.json", "official")):
        if os.path.isfile(path + suffix):
            try:
                with open(path + suffix) as f:
                    side = json.load(f)
            except (OSError, ValueError):
                break
            return transfer_label(side) if kind == "transfer" else f"official {describe_path(side.get('source', path))}"
    return describe_path(path)
