"""Text-to-class: transcripts -> SentencePiece chars -> SpeechT5 text encoder -> class."""
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from fairseq.tasks import register_task

from ..data.split_files import read_ids, read_labels, read_lines
from ..data.text_dataset import TextClassDataset
from ..modalities import TEXT
from ..text_vocab import unencodable_chars
from .base import ClassificationTask, ClassificationTaskConfig, refusing_bad_data

logger = logging.getLogger(__name__)


@dataclass
class T2CConfig(ClassificationTaskConfig):
    sentencepiece_model: Optional[str] = field(
        default=None, metadata={"help": "SpeechT5 spm_char.model (default: <data>/spm_char.model)"}
    )
    text_ext: str = field(default="wrd", metadata={"help": "transcript extension: reads <split>.<text_ext>"})


@register_task("t2c", dataclass=T2CConfig)
class T2CTask(ClassificationTask):
    cfg: T2CConfig
    modality = TEXT

    def __init__(self, cfg, text_dictionary, class_dictionary):
        super().__init__(cfg, text_dictionary, class_dictionary)
        import sentencepiece as spm

        path = cfg.sentencepiece_model or os.path.join(cfg.data, "spm_char.model")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"sentencepiece model {path} not found: copy SpeechT5's spm_char.model there")
        self.spm = spm.SentencePieceProcessor(model_file=path)
        self.spm_path = path

    def encode_text(self, text: str, where: str) -> torch.Tensor:
        """Official text path: space-joined pieces, dictionary lookup, no BOS/EOS."""
        pieces = self.spm.encode(text.strip(), out_type=str)
        if not pieces:
            raise ValueError(f"{where}: empty transcript; remove the row or fix its text")
        bad = unencodable_chars(self.spm, text.strip())
        if bad:  # the rule of data preparation (never a silent <unk>)
            raise ValueError(f"{where}: transcript character(s) {''.join(bad)!r} cannot be encoded by {self.spm_path} "
                             f"(SentencePiece would make them <unk>). xmodal-prepare-slue rejects such rows (--skip-bad "
                             f"leaves them out): re-run it, or fix the transcript")
        ids = []
        for p in pieces:
            i = self.text_dictionary.index(p)
            if i == self.text_dictionary.unk() and p != "<unk>":
                raise ValueError(f"{where}: piece {p!r} from {self.spm_path} is not in the text dictionary: "
                                 f"the sentencepiece model and dict.txt do not belong together")
            ids.append(i)
        return torch.LongTensor(ids)

    @refusing_bad_data
    def load_dataset(self, split: str, **kwargs):
        path = os.path.join(self.cfg.data, f"{split}.{self.cfg.text_ext}")
        lines = read_lines(path, "one transcript per line")
        tokens = [self.encode_text(t, f"{path}:{i + 1}") for i, t in enumerate(lines)]
        n_unk = sum(int((t == self.text_dictionary.unk()).sum()) for t in tokens)
        if n_unk:
            logger.warning(f"{path}: {n_unk} characters unknown to the sentencepiece model became <unk>")
        has_labels = os.path.isfile(os.path.join(self.cfg.data, f"{split}.{self.cfg.labels}"))
        labels = read_labels(self.cfg.data, split, self.cfg.labels, self.class_dictionary, len(lines)) if has_labels else None
        self.datasets[split] = TextClassDataset(tokens, labels, read_ids(self.cfg.data, split, len(lines)),
                                                self.text_dictionary.pad())
        self.check_split_lengths(split)
        if self.cfg.paired_source_modality and self.is_train_split(split):
            self.pair_with_other_modality(split)
