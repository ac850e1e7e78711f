"""What a transfer checks before it copies a tensor: the dictionaries of every checkpoint that provides head or
text-prenet keys (task_state.py, the check training and evaluation use too), the classifier of every checkpoint
that provides head/pooler keys, and the shape of every copied tensor."""
from typing import Dict, List

import torch

from .. import task_state
from ..checkpoints import is_xmodal_checkpoint
from ..models import heads
from ..selectors import group_of, unit_of
from .plan import TransferError
from .sources import LoadedCheckpoint

CLASSIFIER_GROUPS = ("head", "pooler")  # what reads the classifier's features: only moved between equal classifiers
# per checked group: the task_state check, and the transfer's own way out appended to its fix
DICTIONARY_CHECKS = (
    ("class_dictionary", "head", task_state.check_class_labels, ", or pass --reinit head to train a new head"),
    ("text_dictionary", "text_prenet", task_state.check_text_symbols,
     ", or pass --reinit text_prenet (or --keep text_prenet with a matching --modality-from checkpoint)"),
)


def run_checks(assignment, providers, task) -> Dict[str, str]:
    """Dictionary checks for every checkpoint that provides head or text-prenet keys."""
    checks = {}
    for name, group, check, also in DICTIONARY_CHECKS:
        origins = sorted({a.origin for k, a in assignment.items() if group_of(k) == group})
        results = []
        for origin in origins:
            if origin == "init":
                results.append(f"{group} re-initialised: not checked")
                continue
            ck, role = providers[origin]
            check(ck.state, ck.path, task, role, also, error=TransferError)
            results.append(f"{role} matches the target data")
        checks[name] = "; ".join(results)
    return checks


def check_classifiers(assignment, providers, target: str) -> str:
    """Head/pooler keys come only from a checkpoint whose model.classifier is the target's (or are re-initialised)."""
    results = []
    for origin in ("source", "modality"):
        keys = [k for k, a in assignment.items() if a.origin == origin and group_of(k) in CLASSIFIER_GROUPS]
        ck, role = providers[origin]
        if not keys or ck is None:
            continue
        theirs = heads.classifier_of(ck.state["cfg"]["model"]) if is_xmodal_checkpoint(ck.state) else heads.DECODER_QUERY
        if theirs != target:
            groups = sorted({group_of(k) for k in assignment if group_of(k) in CLASSIFIER_GROUPS})
            raise TransferError(f"classifier mismatch: {role} {ck.path} has model.classifier={theirs}, the target "
                                f"{target}, so its {'/'.join(sorted({group_of(k) for k in keys}))} would read other "
                                f"features. Fix: pass --reinit {','.join(groups)} (a new classifier), or keep the "
                                f"classifier ({theirs})")
        results.append(f"{role} has model.classifier={target}")
    return "; ".join(results) or f"{target}: head re-initialised"


def take_tensor(ck: LoadedCheckpoint, role: str, key: str, like: torch.Tensor, new_sd, casts) -> List[str]:
    if key in ck.unavailable:
        return [f"{role} {ck.path} cannot provide {key}: {ck.unavailable[key]}"]
    if key not in ck.tensors:
        theirs = heads.classifier_of(ck.state["cfg"]["model"]) if is_xmodal_checkpoint(ck.state) else None
        why = (f"its model.classifier={theirs} builds no decoder" if theirs and not heads.builds_decoder(theirs)
               and key.startswith(heads.DECODER_PREFIX) else "a different model?")
        return [f"{role} {ck.path} has no {key} ({why}); select it from elsewhere (--take/--keep/"
                f"--reinit {unit_of(key)})"]
    t = ck.tensors[key]
    if tuple(t.shape) != tuple(like.shape):
        hint = {"head": "class dictionary size differs; see labels.<labels>.txt or --reinit head",
                "text_prenet": "text dictionary size differs; see dict.txt or --reinit text_prenet"}.get(
                    group_of(key), "the architectures differ; compare cfg.model of both checkpoints")
        return [f"{role} {ck.path}: {key} has shape {tuple(t.shape)}, the target model needs {tuple(like.shape)} "
                f"({hint})"]
    if t.dtype != like.dtype:
        casts[key] = f"{t.dtype} -> {like.dtype}"
        t = t.to(like.dtype)
    new_sd[key] = t
    return []
