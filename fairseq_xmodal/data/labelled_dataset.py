"""What the speech and text datasets share: sizes, labels, ids, seeded length ordering and the batch fields."""
import numpy as np
import torch
from fairseq.data import FairseqDataset


class LabelledDataset(FairseqDataset):
    """Subclasses set `sizes` (np.int64, per row), `labels` (class positions or None) and `ids` (or None)."""

    @property
    def can_reuse_epoch_itr_across_epochs(self):
        # Length ties are broken randomly; rebuilding batches per epoch (seeded by seed + epoch) keeps the data
        # order of a run resumed in epoch N identical to an uninterrupted one.
        return False

    def num_tokens(self, index):
        return int(self.sizes[index])

    def size(self, index):
        return int(self.sizes[index])

    def num_tokens_vec(self, indices):
        return self.sizes[indices]

    def ordered_indices(self):
        # Longest first, ties in a random order drawn under fairseq's numpy_seed(seed + epoch).
        return np.lexsort([np.random.permutation(len(self)), self.sizes])[::-1]

    def item(self, index, source, **extra):
        item = {"id": index, "source": source, **extra}
        if self.labels is not None:
            item["target"] = self.labels[index]
        return item

    def batch(self, samples, net_input):
        batch = {"id": torch.LongTensor([s["id"] for s in samples]), "nsentences": len(samples),
                 "ntokens": len(samples), "net_input": net_input}
        if "target" in samples[0]:
            batch["target"] = torch.LongTensor([s["target"] for s in samples])
        return batch
