"""Transcripts tokenised like the official text path (SentencePiece pieces, no BOS/EOS) + class labels for t2c."""
from typing import List, Optional

import numpy as np
import torch
from fairseq.data import FairseqDataset, data_utils


class TextClassDataset(FairseqDataset):
    def __init__(self, tokens: List[torch.Tensor], labels: Optional[List[int]], ids: Optional[List[str]], pad: int):
        self.tokens, self.labels, self.ids, self.pad = tokens, labels, ids, pad
        self.sizes = np.array([len(t) for t in tokens], dtype=np.int64)

    def __len__(self):
        return len(self.tokens)

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        # Length ties are broken randomly; rebuilding batches per epoch (seeded by seed + epoch) keeps the data
        # order of a run resumed in epoch N identical to an uninterrupted one.
        return False

    def __getitem__(self, index):
        item = {"id": index, "source": self.tokens[index]}
        if self.labels is not None:
            item["target"] = self.labels[index]
        return item

    def num_tokens(self, index):
        return int(self.sizes[index])

    def size(self, index):
        return int(self.sizes[index])

    def ordered_indices(self):
        return np.lexsort([np.random.permutation(len(self)), self.sizes])[::-1]

    def collater(self, samples):
        if not samples:
            return {}
        src = data_utils.collate_tokens([s["source"] for s in samples], self.pad, left_pad=False)
        batch = {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": len(samples),
            "net_input": {"src_tokens": src, "src_lengths": torch.LongTensor([s["source"].numel() for s in samples])},
        }
        if "target" in samples[0]:
            batch["target"] = torch.LongTensor([s["target"] for s in samples])
        return batch
