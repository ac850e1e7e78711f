"""Transcripts tokenised like the official text path (SentencePiece pieces, no BOS/EOS) + class labels for t2c."""
from typing import List, Optional

import numpy as np
import torch
from fairseq.data import data_utils

from .labelled_dataset import LabelledDataset


class TextClassDataset(LabelledDataset):
    def __init__(self, tokens: List[torch.Tensor], labels: Optional[List[int]], ids: Optional[List[str]], pad: int):
        self.tokens, self.labels, self.ids, self.pad = tokens, labels, ids, pad
        self.sizes = np.array([len(t) for t in tokens], dtype=np.int64)

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, index):
        return self.item(index, self.tokens[index])

    def collater(self, samples):
        if not samples:
            return {}
        src = data_utils.collate_tokens([s["source"] for s in samples], self.pad, left_pad=False)
        lengths = torch.LongTensor([s["source"].numel() for s in samples])
        return self.batch(samples, {"src_tokens": src, "src_lengths": lengths})
