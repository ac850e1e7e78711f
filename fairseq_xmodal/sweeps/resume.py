"""Resuming a sweep job safely: which checkpoints are complete, and the repair of a half-copied checkpoint_last.pt."""
import glob
import os
import zipfile
from typing import Optional

from ..files import atomic_copy


def checkpoint_is_complete(path: str) -> bool:
    """torch.save writes a zip archive whose directory is at the very end: a file cut short by a kill has none."""
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def newest_complete_checkpoint(save_dir: str, exclude: str = "checkpoint_last.pt") -> Optional[str]:
    """The most recently written complete `checkpoint*.pt` of save_dir other than `exclude`, or None."""
    skip = os.path.join(save_dir, exclude)
    candidates = [p for p in glob.glob(os.path.join(glob.escape(save_dir), "checkpoint*.pt")) if p != skip]
    return max((p for p in candidates if checkpoint_is_complete(p)), key=os.path.getmtime, default=None)


def repair_last_checkpoint(save_dir: str, last_name: str = "checkpoint_last.pt") -> Optional[str]:
    """Make `checkpoint_last.pt` the newest complete checkpoint before fairseq resumes from it.

    fairseq writes the first file of a save atomically (checkpoint_E_U.pt or checkpoint_best.pt) and then *copies* it to
    the others, checkpoint_last.pt last. A job killed during that copy leaves a truncated checkpoint_last.pt (fairseq
    would crash on it at every requeue); one killed just before it leaves the previous save. Either way the newest
    complete `checkpoint*.pt` holds the state fairseq meant to save, so it is copied (atomically) to checkpoint_last.pt.
    Returns a description of what was done, or None when nothing was needed."""
    last = os.path.join(save_dir, last_name)
    newest = newest_complete_checkpoint(save_dir, exclude=last_name)
    last_exists = os.path.exists(last)
    last_ok = last_exists and checkpoint_is_complete(last)
    if last_ok and (newest is None or os.path.getmtime(newest) <= os.path.getmtime(last)):
        return None
    if newest is None:
        if not last_exists:
            return None
        os.replace(last, last + ".incomplete")
        return f"{last} is incomplete and no other complete checkpoint exists: moved aside to {last}.incomplete"
    atomic_copy(newest, last)
    why = "was stale" if last_ok else ("was incomplete" if last_exists else "was missing")
    return f"{last_name} {why}: replaced by a copy of {os.path.basename(newest)}"
