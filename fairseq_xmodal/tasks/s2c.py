"""Speech-to-class: 16 kHz waveforms -> SpeechT5 speech encoder -> class."""
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.tasks import register_task

from ..data.speech_dataset import SpeechClassDataset
from ..data.split_files import read_ids, read_labels, read_manifest
from ..modalities import SPEECH
from .base import ClassificationTask, ClassificationTaskConfig, refusing_bad_data


@dataclass
class S2CConfig(ClassificationTaskConfig):
    sample_rate: int = field(default=16000, metadata={"help": "required audio rate; any other rate is an error"})
    train_crop_samples: Optional[int] = field(
        default=None,
        metadata={"help": "crop training-split utterances longer than this to a random window seeded by "
                          "(common.seed, epoch, index); other splits are always evaluated on the full utterance. "
                          "task.long_utterances=crop does the same for utterances over dataset.max_tokens only"},
    )


@register_task("s2c", dataclass=S2CConfig)
class S2CTask(ClassificationTask):
    cfg: S2CConfig
    modality = SPEECH

    @refusing_bad_data
    def load_dataset(self, split: str, **kwargs):
        root, files, sizes = read_manifest(self.cfg.data, split)
        has_labels = os.path.isfile(os.path.join(self.cfg.data, f"{split}.{self.cfg.labels}"))
        labels = read_labels(self.cfg.data, split, self.cfg.labels, self.class_dictionary, len(files)) if has_labels else None
        self.datasets[split] = SpeechClassDataset(
            root, files, sizes, labels, read_ids(self.cfg.data, split, len(files)), self.cfg.sample_rate,
            manifest=os.path.join(self.cfg.data, f"{split}.tsv"),
            crop_samples=self.cfg.train_crop_samples if self.is_train_split(split) else None,
            seed=self.cfg.seed,
        )
        self.check_split_lengths(split)
        if self.cfg.paired_source_modality and self.is_train_split(split):
            self.pair_with_other_modality(split)
