"""What fairseq's trainer does not check before it trains from a checkpoint, done just before it loads one.

`fairseq.trainer.Trainer.load_checkpoint(filename)` is the one call through which fairseq-hydra-train resumes
(`checkpoint_last.pt`, `restore_file`) and starts from `checkpoint.finetune_from_model`. Before it runs, for our tasks:

- a half-written `checkpoint_last.pt` (a run killed while fairseq copied it) gets the repair sweeps get
  (sweeps.repair_last_checkpoint: the newest complete checkpoint is copied over it), in plain runs too;
- an official SpeechT5 checkpoint is refused with the command that converts it (xmodal-import-official);
- a fairseq_xmodal checkpoint whose task_state class labels or text symbols differ from the data folder's is refused
  (task_state.py, the check of xmodal-transfer and xmodal-evaluate: a reordered labels.sent.txt would otherwise
  silently swap the meaning of head rows).

The checkpoint is opened memory-mapped for the check, so the second read (fairseq's) costs no extra memory.
"""
import logging
import os
import sys
import zipfile

from . import task_state
from .checkpoints import is_official_checkpoint, is_xmodal_checkpoint
from .safe_load import safe_torch_load
from .tasks.base import ClassificationTask

logger = logging.getLogger(__name__)


class TrainingCheckpointError(ValueError):
    """A checkpoint that fairseq would train from although it does not fit the task; the message says what to do."""


def check_training_checkpoint(task, filename: str) -> None:
    """Raise TrainingCheckpointError if `filename` cannot be trained from under `task` (one of ours) without changing
    meaning."""
    mmap = zipfile.is_zipfile(filename)  # the legacy (pre-1.6) format cannot be mapped
    state = safe_torch_load(filename, map_location="cpu", mmap=mmap)
    name = type(task).__name__.replace("Task", "").lower()
    if is_official_checkpoint(state):
        raise TrainingCheckpointError(
            f"{filename} is an official SpeechT5 checkpoint; fairseq cannot train from it directly. Convert it "
            f"first: xmodal-import-official --checkpoint {filename} --task {name} --data {task.cfg.data} --out "
            f"<init.pt>, then pass checkpoint.finetune_from_model=<init.pt>")
    if not is_xmodal_checkpoint(state):
        return  # not ours to judge; fairseq's strict load reports what does not fit
    task_state.check_dictionaries(state, os.path.abspath(filename), task, "training checkpoint",
                                  also=", or transfer the checkpoint with xmodal-transfer --reinit head (or "
                                       "text_prenet) first and train from the result", error=TrainingCheckpointError)


def before_load(trainer, filename: str) -> None:
    """Called by fairseq_patches.trainer_load_checkpoint before fairseq's Trainer.load_checkpoint(filename).

    Rank 0 repairs a truncated checkpoint_last.pt (only rank 0 reads the file; the others get its broadcast). The
    refusals run here in a single-process run; with several ranks fairseq_patches checks the broadcast state on every
    rank instead, so that all of them stop together."""
    if not isinstance(trainer.task, ClassificationTask) or trainer.data_parallel_rank != 0:
        return
    if os.path.basename(filename) == "checkpoint_last.pt" and os.path.exists(filename):
        from .sweeps import checkpoint_is_complete, repair_last_checkpoint

        # only a truncated file: a plain run's folder may hold checkpoints copied in later (newer mtimes)
        repaired = None if checkpoint_is_complete(filename) else \
            repair_last_checkpoint(os.path.dirname(os.path.abspath(filename)))
        if repaired:
            logger.warning(repaired)
    if os.path.isfile(filename) and trainer.data_parallel_world_size == 1:
        try:
            check_training_checkpoint(trainer.task, filename)
        except TrainingCheckpointError as e:
            print(f"fairseq-xmodal: {e}".replace("\n", " "), file=sys.stderr, flush=True)
            raise SystemExit(2) from None
