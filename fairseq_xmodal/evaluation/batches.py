"""The one "every row of a split exactly once" batch loop of evaluation and the probe.

Batches come from the task's own iterator in a fixed order (no shuffling, required_batch_size_multiple=1, a fixed
batch-order seed), so the same rows always meet in the same padded batches; the model runs in eval mode under
torch.inference_mode. The loop counts how often each dataset row was seen, so that callers can refuse a pass in which
a row was skipped (an empty audio file, a batching bug) or computed twice.
"""
import warnings
from typing import Callable, Optional, Tuple

import numpy as np
import torch

from ..progress import progress


class BatchingError(ValueError):
    """The task cannot batch the split as asked (a row over max_tokens); the task's message names the rows."""


def each_row_once(task, dataset, step: Callable[[dict, np.ndarray], None], desc: str,
                  batch_size: Optional[int] = 8, max_tokens: Optional[int] = None, device: str = "cpu",
                  shard: Optional[Tuple[int, int]] = None, seed: int = 1, model=None) -> np.ndarray:
    """step(sample on `device`, dataset indices [B]) for every batch; -> how often each row was seen [N].
    shard=(i, n): only batches i, i+n, ... of that same order (fairseq's sharded iterator).
    A refusal of the task's iterator (a row over max_tokens) is a BatchingError, for the caller to explain; errors of
    `step` propagate as they are."""
    from fairseq import utils

    if model is not None:
        model.eval()
        model.to(device)
    seen = np.zeros(len(dataset), dtype=np.int64)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*pin_memory.*")  # fairseq always asks for it; harmless on CPU
        try:
            itr = task.get_batch_iterator(dataset, max_tokens=max_tokens, max_sentences=batch_size,
                                          max_positions=None, ignore_invalid_inputs=False,
                                          required_batch_size_multiple=1, seed=seed, num_workers=0, epoch=1,
                                          num_shards=shard[1] if shard else 1,
                                          shard_id=shard[0] if shard else 0).next_epoch_itr(shuffle=False)
        except ValueError as e:
            raise BatchingError(str(e)) from None
        for sample in progress(itr, len(itr), desc, unit="batch"):  # streamed, not all in memory
            if not sample:
                continue
            sample = utils.move_to_cuda(sample) if device != "cpu" else sample
            idx = sample["id"].cpu().numpy()
            step(sample, idx)
            seen[idx] += 1
    return seen


def row_ids(dataset):
    """The split's utterance ids (its .id file), or the row numbers as strings."""
    return list(dataset.ids) if getattr(dataset, "ids", None) else [str(i) for i in range(len(dataset))]
