"""The same rows of a split in both modalities, for objectives that need the other modality's inputs (xmodal_mona).

Both tasks read one data folder (docs/data_format.md), so row i of a split is one utterance with its audio AND its
transcript. `PairedDataset` wraps the task's own dataset (the TARGET modality: what the task trains on; its sizes,
order and batching are unchanged) and loads row i of the OTHER modality (the SOURCE modality, whose pretrained
knowledge is to be kept) for every item. A batch gains

    sample["other_modality_net_input"]  the other modality's net_input for the same rows, in the same order
                                        (speech: {"source", "padding_mask"}; text: {"src_tokens", "src_lengths"})
    sample["other_modality_target"]     their labels (identical to sample["target"]: same rows)

Nothing random happens here: row i is paired with row i, and the other modality is loaded the way its own task
would load it (full length: the paired side is never cropped): ClassificationTask.pair_with_other_modality
(tasks/base.py) builds it.
"""
import torch
from fairseq.data import BaseWrapperDataset

PAIRED = "paired"  # key of the other modality's item inside a target item


class PairedDataset(BaseWrapperDataset):
    """`dataset` (target modality, drives batching) + `other` (source modality), checked row for row."""

    def __init__(self, dataset, other, split: str = "?"):
        super().__init__(dataset)
        self.other = other
        self.split = split
        if len(dataset) != len(other):
            raise ValueError(f"split {split}: {len(dataset)} rows in the task's modality but {len(other)} in the "
                             f"paired modality; every file of a split must list the same utterances")
        ids, other_ids = getattr(dataset, "ids", None), getattr(other, "ids", None)
        if ids is not None and other_ids is not None and list(ids) != list(other_ids):
            bad = next(i for i, (a, b) in enumerate(zip(ids, other_ids)) if a != b)
            raise ValueError(f"split {split}: row {bad + 1} is {ids[bad]!r} in one modality and {other_ids[bad]!r} "
                             f"in the other")
        labels, other_labels = getattr(dataset, "labels", None), getattr(other, "labels", None)
        if labels is not None and other_labels is not None and list(labels) != list(other_labels):
            raise ValueError(f"split {split}: the two modalities disagree on labels (they read the same "
                             f"<split>.<labels> file, so the dataset objects are inconsistent)")

    def __getattr__(self, name):
        # Everything the tasks and tools ask of a dataset (ids, labels, sample_rate, crop_to, ...) is the target's.
        # __dict__ lookup: no recursion while unpickling (before `dataset` exists).
        dataset = self.__dict__.get("dataset")
        if dataset is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(dataset, name)

    def __getitem__(self, index):
        item = dict(self.dataset[index])
        item[PAIRED] = self.other[index]
        return item

    def num_tokens_vec(self, indices):
        return self.dataset.num_tokens_vec(indices)

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        if hasattr(self.other, "set_epoch"):
            self.other.set_epoch(epoch)

    def collater(self, samples):
        batch = self.dataset.collater(samples)
        if not batch:
            return batch
        other = self.other.collater([s[PAIRED] for s in samples])
        if not other or not torch.equal(other["id"], batch["id"]):
            got = [] if not other else other["id"].tolist()
            raise ValueError(f"split {self.split}: the paired modality collated rows {got} for rows "
                             f"{batch['id'].tolist()} (an empty utterance in one modality?)")
        batch["other_modality_net_input"] = other["net_input"]
        if "target" in other:
            batch["other_modality_target"] = other["target"]
        return batch
