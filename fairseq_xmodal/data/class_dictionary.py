"""The class inventory shared by s2c and t2c.

`labels.sent.txt` lists the labels, one per line, in class order. With `padded=True` (thesis-compatible) the head
has the prior system's 9-row layout: fairseq specials <s> <pad> </s> <unk>, the labels, then <ctc_blank> <mask>.
Only the label rows are ever scored or predicted; the padding rows exist so checkpoints of both layouts line up.
"""
import os
from typing import List

import torch

from .utf8 import read_utf8_lines

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
PADDING_TAIL = ("<ctc_blank>", "<mask>")


class ClassDictionary:
    def __init__(self, labels: List[str], padded: bool = True, source: str = "<memory>"):
        if len(set(labels)) != len(labels) or not labels:
            raise ValueError(f"{source}: class labels must be unique and non-empty, got {labels}")
        clash = set(labels) & set(SPECIALS + PADDING_TAIL)
        if clash:
            raise ValueError(f"{source}: labels {sorted(clash)} collide with reserved symbols")
        self.labels, self.padded, self.source = list(labels), padded, source
        self.symbols = list(SPECIALS) + self.labels + list(PADDING_TAIL) if padded else list(self.labels)
        offset = len(SPECIALS) if padded else 0
        self.label_rows = torch.arange(offset, offset + len(self.labels))

    @classmethod
    def load(cls, path: str, padded: bool = True) -> "ClassDictionary":
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"class dictionary {path} not found: write one label per line (e.g. Negative, Neutral, Positive)"
            )
        labels = [line.split()[0] for line in read_utf8_lines(path) if line.strip()]  # `label count` lines too
        return cls(labels, padded, source=path)

    @property
    def num_outputs(self) -> int:
        """Rows of the classification head (= len(symbols): labels plus, when padded, the fairseq specials)."""
        return len(self.symbols)

    @property
    def num_labels(self) -> int:
        """Real labels, the only rows ever scored. There is deliberately no __len__: fairseq's Dictionary.__len__
        counts symbols, so len() here would be read as num_outputs by some and as num_labels by others."""
        return len(self.labels)

    def index(self, label: str, where: str = "") -> int:
        """Label -> position in `labels` (0..n-1). Unknown labels are an error, never <unk>."""
        try:
            return self.labels.index(label)
        except ValueError:
            raise ValueError(
                f"{where}: label {label!r} is not in the class dictionary {self.source} ({', '.join(self.labels)}); "
                f"add it there or filter the row out in data preparation"
            ) from None

    def state(self) -> dict:
        return {"labels": self.labels, "padded": self.padded}
