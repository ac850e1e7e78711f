"""What every fairseq_xmodal checkpoint records about the data it was trained on, and the one check of it.

A task saves its class labels (order included), whether the head is padded, and its text symbols in the checkpoint's
`task_state` (tasks/base.py). A head row or a text-embedding row only means something with those dictionaries, so
everything that reuses a checkpoint on a data folder checks them here first: xmodal-transfer (for the providers of
head / text-prenet keys), training from a checkpoint (training_guard.py, and every rank in fairseq_patches.py),
xmodal-evaluate and xmodal-probe (evaluation/evaluate.py). Nothing in this module imports the rest of the package.
"""
import os
from typing import Any, Dict, Type

# Task fields a checkpoint carries to every later use (transfer, evaluation): they define the head layout, not the
# data folder.
CARRIED_TASK_FIELDS = ("labels", "pad_class_dictionary")


class DictionaryMismatch(ValueError):
    """The data's class or text dictionary is not the checkpoint's; the message names both files and the fix."""


def record(class_dictionary, text_dictionary) -> Dict[str, Any]:
    """The task_state entries a task saves in every checkpoint."""
    return {"class_labels": list(class_dictionary.labels), "class_padded": class_dictionary.padded,
            "text_symbols": list(text_dictionary.symbols)}


def _their_data(state: Dict[str, Any]) -> str:
    cfg = state.get("cfg") or {}
    return (cfg.get("task") or {}).get("data") or "<its data folder>"


def check_class_labels(state: Dict[str, Any], path: str, task, role: str = "checkpoint", also: str = "",
                       error: Type[Exception] = DictionaryMismatch) -> None:
    """The head rows of the checkpoint at `path` must mean the labels of `task`'s class dictionary, in its order.
    `also`: a further way out, appended to the fix (e.g. xmodal-transfer's `--reinit head`)."""
    ts = state.get("task_state") or {}
    if "class_labels" not in ts:
        raise error(f"{role} {path} records no class labels (task_state.class_labels), so its head cannot be "
                    f"checked; re-save it with fairseq_xmodal (xmodal-transfer --source it --task <its task>){also}")
    cd = task.class_dictionary
    theirs, padded = list(ts["class_labels"]), bool(ts.get("class_padded", True))
    if (theirs, padded) == (list(cd.labels), cd.padded):
        return
    if padded != cd.padded:
        what = f"head layout differs: pad_class_dictionary={padded} vs {cd.padded}"
        fix = f"set task.pad_class_dictionary={str(padded).lower()}"
    elif sorted(theirs) == sorted(cd.labels):
        what = "same labels, other order: the head rows would be silently permuted"
        fix = f"make {cd.source} list {', '.join(theirs)} in this order"
    else:
        what = f"{len(theirs)} vs {len(cd.labels)} classes"
        fix = f"make {cd.source} list exactly {', '.join(theirs)}"
    their_file = os.path.join(_their_data(state), f"labels.{task.cfg.labels}.txt")
    raise error(f"class dictionary mismatch ({what}): {role} {path} was trained with classes {theirs} "
                f"(padded={padded}, {their_file}), but {cd.source} gives {list(cd.labels)} (padded={cd.padded}). "
                f"Fix: {fix}{also}")


def check_text_symbols(state: Dict[str, Any], path: str, task, role: str = "checkpoint", also: str = "",
                       error: Type[Exception] = DictionaryMismatch) -> None:
    """The text embedding of the checkpoint at `path` is over its text dictionary: `task`'s must be the same."""
    ts = state.get("task_state") or {}
    if "text_symbols" not in ts:
        raise error(f"{role} {path} records no text dictionary (task_state.text_symbols), so its text prenet cannot "
                    f"be checked; re-save it with fairseq_xmodal{also}")
    theirs, ours = list(ts["text_symbols"]), list(task.text_dictionary.symbols)
    if theirs == ours:
        return
    target_dict = task.cfg.text_dictionary or os.path.join(task.cfg.data, "dict.txt")
    first = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
    diff = (f"first difference at index {first}: {theirs[first] if first < len(theirs) else '<end>'!r} vs "
            f"{ours[first] if first < len(ours) else '<end>'!r}")
    raise error(f"text dictionary mismatch: {role} {path} was trained with a {len(theirs)}-symbol text dictionary "
                f"({os.path.join(_their_data(state), 'dict.txt')}), but {target_dict} gives {len(ours)} symbols "
                f"({diff}). Fix: copy the SpeechT5 dict.txt the checkpoint used to {target_dict}{also}")


def check_dictionaries(state: Dict[str, Any], path: str, task, role: str = "checkpoint", also: str = "",
                       error: Type[Exception] = DictionaryMismatch) -> None:
    """Both checks: class labels (order included) and text symbols of `task`'s data are the checkpoint's."""
    check_class_labels(state, path, task, role, also, error)
    check_text_symbols(state, path, task, role, also, error)

