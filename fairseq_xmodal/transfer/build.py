"""xmodal-transfer's one entry point: build the target model, give every key its tensor from its one origin, check,
write the checkpoint and its accounting; and the ${xmodal_transplanted:} resolver that reads that accounting back."""
import copy
import json
import os
from typing import List, Optional

import torch

from ..checkpoints import build_task_and_model, make_cfg, save_checkpoint
from ..files import atomic_write_json
from ..modalities import TASKS
from ..models import heads
from ..selectors import describe
from ..task_state import CARRIED_TASK_FIELDS
from .checks import check_classifiers, run_checks, take_tensor
from .init_strategies import INIT_STRATEGIES, InitContext
from .plan import TransferError, TransferPlan, assign
from .report import TransferReport, build_report
from .sources import load_modality, load_xmodal


def transfer(plan: TransferPlan) -> TransferReport:
    """Build the target checkpoint of `plan`, write it and `<out>.transfer.json`, return the accounting."""
    if plan.task not in TASKS:
        raise TransferError(f"target task {plan.task!r}: use one of {', '.join(TASKS)}")
    if plan.init not in INIT_STRATEGIES:
        raise TransferError(f"unknown init strategy {plan.init!r} (known: {', '.join(INIT_STRATEGIES)})")
    if plan.keep and not plan.modality_from:
        raise TransferError("--keep needs --modality-from (the checkpoint the kept modules come from)")
    if plan.rest == "modality" and not plan.modality_from:
        raise TransferError("--rest modality needs --modality-from")
    out = os.path.abspath(plan.out)
    if os.path.exists(out) and not plan.overwrite:
        raise TransferError(f"{out} exists; choose another --out or pass --overwrite")
    if out == os.path.abspath(plan.source) or (plan.modality_from and out == os.path.abspath(plan.modality_from)):
        raise TransferError(f"--out {out} would overwrite an input checkpoint")
    if not os.path.isdir(plan.data):
        raise TransferError(f"target data folder {plan.data} not found")
    rules, notes = plan.rules()  # a selector that cannot be read fails before any checkpoint is loaded

    source = load_xmodal(plan.source, "source")
    src_cfg = source.state["cfg"]
    task_dict = {"_name": plan.task, "data": os.path.abspath(plan.data),
                 **{f: src_cfg["task"][f] for f in CARRIED_TASK_FIELDS if f in src_cfg["task"]},
                 **plan.task_overrides}
    model_dict = copy.deepcopy(src_cfg["model"])
    if plan.classifier is not None:
        model_dict["classifier"] = heads.classifier_of({"classifier": plan.classifier})  # validated
    cfg = make_cfg(task_dict, model_dict, seed=plan.seed)
    with torch.random.fork_rng(devices=[]):  # seeded construction = the "model" init; the caller's RNG is untouched
        torch.manual_seed(plan.seed)
        task, model = build_task_and_model(cfg)
    target_sd = model.state_dict()
    keys = list(target_sd)

    assignment = assign(rules, keys)
    modality = None
    if plan.modality_from:
        modality = load_modality(plan.modality_from, plan.task, plan.data)
    providers = {"source": (source, "source"), "modality": (modality, "--modality-from")}

    checks = run_checks(assignment, providers, task)
    checks["classifier"] = check_classifiers(assignment, providers, model.classifier)
    new_sd, casts = {}, {}
    problems = []
    for origin in ("source", "modality"):
        ck, role = providers[origin]
        for key in [k for k, a in assignment.items() if a.origin == origin]:
            problems += take_tensor(ck, role, key, target_sd[key], new_sd, casts)
    if problems:
        raise TransferError("cannot transfer:\n  " + "\n  ".join(problems))
    init_keys = [k for k, a in assignment.items() if a.origin == "init"]
    init_ctx = InitContext(model, init_keys, plan.seed)
    if init_keys:
        fresh = INIT_STRATEGIES[plan.init](init_ctx)
        missing = set(init_keys) - set(fresh)
        if missing:
            raise TransferError(f"init strategy {plan.init!r} returned no tensor for {sorted(missing)[:5]}")
        new_sd.update({k: fresh[k] for k in init_keys})
    model.load_state_dict(new_sd, strict=True)  # every key exactly once, every shape right

    report = build_report(plan, out, source, modality, task, assignment, checks, casts, notes, model.classifier)
    report.init_notes = {k: init_ctx.notes[k] for k in init_keys if k in init_ctx.notes}
    per_key = ("transferred", "kept", "initialised", "dropped_source_keys", "init_notes")  # in the JSON only
    save_checkpoint(out, cfg, model.state_dict(), task.state.state_dict,
                    provenance={"transfer": {k: v for k, v in report.to_dict().items() if k not in per_key}})
    atomic_write_json(report.to_dict(), out + ".transfer.json")
    return report


def transplanted_selectors(path: Optional[str]) -> List[str]:
    """Selectors (selectors.py: encoder.layers.3, encoder.rest, a group) for what the transfer that
    wrote `path` took from its source or re-initialised, i.e. everything not kept from --modality-from. Read from
    `<path>.transfer.json`. The Hydra resolver ${xmodal_transplanted:<path>} (config/sweep/transplanted/frozen.yaml)."""
    if not path:
        raise TransferError("${xmodal_transplanted:} needs checkpoint.finetune_from_model: a checkpoint written by "
                            "xmodal-transfer or xmodal-prepare-transplants")
    side = str(path) + ".transfer.json"
    if not os.path.isfile(side):
        raise TransferError(f"{side} not found: freezing the transplanted layers of {path} needs the accounting that "
                            f"xmodal-transfer / xmodal-prepare-transplants write next to the checkpoint")
    with open(side) as f:
        report = json.load(f)
    units = describe(list(report["transferred"]) + list(report["initialised"]))
    if not units:
        raise TransferError(f"{path}: its transfer took nothing from the source and re-initialised nothing")
    return units
