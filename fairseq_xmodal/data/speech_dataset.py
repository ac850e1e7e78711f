"""16 kHz mono utterances + class labels for s2c. Full length unless the training split asks for seeded crops.

`sizes` are in audio samples, so fairseq's max_tokens batching (`dataset.max_tokens`) bounds the padded samples of a
batch: many short utterances or one long one."""
import os
from typing import List, Optional

import numpy as np
import soundfile as sf
import torch
from fairseq.data import data_utils

from .labelled_dataset import LabelledDataset


class AudioReadError(ValueError):
    """A missing or unreadable audio file; the message names it, its manifest line and the fix."""


class SpeechClassDataset(LabelledDataset):
    def __init__(self, root: str, files: List[str], sizes: List[int], labels: Optional[List[int]],
                 ids: Optional[List[str]], sample_rate: int, manifest: str,
                 crop_samples: Optional[int] = None, seed: int = 1):
        self.root, self.files, self.labels, self.ids = root, files, labels, ids
        self.true_sizes = np.array(sizes, dtype=np.int64)
        self.sample_rate, self.manifest = sample_rate, manifest
        self.crop_samples, self.seed, self.epoch = None, seed, 1
        self.sizes = self.true_sizes
        if crop_samples is not None:
            self.crop_to(crop_samples)

    def crop_to(self, samples: int):
        """Train on a seeded random window of at most `samples` (training splits only; the task decides)."""
        if samples <= 0:
            raise ValueError(f"crop length must be positive, got {samples}")
        self.crop_samples = samples if self.crop_samples is None else min(self.crop_samples, samples)
        self.sizes = np.minimum(self.true_sizes, self.crop_samples)

    def __len__(self):
        return len(self.files)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def load_audio(self, index: int) -> np.ndarray:
        path = os.path.join(self.root, self.files[index])
        where = f"(manifest {self.manifest}, line {index + 2})"
        if not os.path.isfile(path):
            raise AudioReadError(f"audio file {path} {where} is missing: restore it, or re-run data preparation")
        try:
            wav, sr = sf.read(path, dtype="float32", always_2d=True)
        except Exception as e:  # soundfile raises several types; name the file either way
            reason = " ".join(str(e).split())[:200]
            raise AudioReadError(f"cannot read audio {path} {where}: {reason}. The file is corrupt or truncated: "
                                 f"restore it, or re-run data preparation") from None
        if sr != self.sample_rate:
            raise ValueError(
                f"{path} is {sr} Hz but the task expects {self.sample_rate} Hz: resample it to {self.sample_rate} Hz "
                f"mono (e.g. `sox in.flac -r {self.sample_rate} -c 1 out.flac`) and re-run data preparation"
            )
        wav = wav.mean(axis=1)  # stereo -> mono, as the official loader does
        if len(wav) != self.true_sizes[index]:
            raise ValueError(
                f"{path} has {len(wav)} samples but {self.manifest} line {index + 2} says {self.true_sizes[index]}: "
                f"the manifest is stale; re-run data preparation"
            )
        return wav

    def __getitem__(self, index):
        wav = self.load_audio(index)
        crop = None
        if self.crop_samples is not None and len(wav) > self.crop_samples:
            # Seeded by (seed, epoch, index): independent of workers and iteration order.
            with data_utils.numpy_seed(self.seed, self.epoch, index):
                start = int(np.random.randint(0, len(wav) - self.crop_samples + 1))
            wav, crop = wav[start : start + self.crop_samples], start
        return self.item(index, torch.from_numpy(np.ascontiguousarray(wav)), crop_start=crop)

    def collater(self, samples):
        samples = [s for s in samples if s["source"].numel() > 0]
        if not samples:
            return {}
        longest = max(s["source"].numel() for s in samples)
        source = torch.zeros(len(samples), longest)
        padding_mask = torch.ones(len(samples), longest, dtype=torch.bool)
        for i, s in enumerate(samples):
            n = s["source"].numel()
            source[i, :n], padding_mask[i, :n] = s["source"], False
        return self.batch(samples, {"source": source, "padding_mask": padding_mask})
