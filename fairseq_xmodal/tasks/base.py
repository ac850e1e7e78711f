"""What s2c and t2c share: the data folder, the text and class dictionaries, and long-utterance policy."""
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask
from omegaconf import II, MISSING

from ..data.class_dictionary import ClassDictionary
from ..text_vocab import load_text_dictionary

logger = logging.getLogger(__name__)

LONG_POLICY = ChoiceEnum(["error", "skip"])


@dataclass
class ClassificationTaskConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "data folder (docs/data_format.md), shared by s2c and t2c"})
    labels: str = field(
        default="sent", metadata={"help": "label extension: reads <split>.<labels> and labels.<labels>.txt"}
    )
    pad_class_dictionary: bool = field(
        default=True,
        metadata={"help": "thesis-compatible head: fairseq specials + labels + <ctc_blank>, <mask> rows "
                          "(9 outputs for 3 labels); only label rows are ever scored"},
    )
    text_dictionary: Optional[str] = field(
        default=None, metadata={"help": "SpeechT5 dict.txt (default: <data>/dict.txt); <mask>, <ctc_blank> are appended"}
    )
    long_utterances: LONG_POLICY = field(
        default="error",
        metadata={"help": "an utterance longer than the batch limit (dataset.max_tokens / max positions): 'error' "
                          "stops with its ids, 'skip' leaves it out and logs every skipped id"},
    )
    train_subset: str = II("dataset.train_subset")
    seed: int = II("common.seed")


class ClassificationTask(FairseqTask):
    cfg: ClassificationTaskConfig

    def __init__(self, cfg: ClassificationTaskConfig, text_dictionary, class_dictionary: ClassDictionary):
        super().__init__(cfg)
        self.text_dictionary = text_dictionary
        self.class_dictionary = class_dictionary
        # Saved in every checkpoint: transfer and evaluation refuse data whose dictionaries differ.
        self.state.merge_state_dict({
            "class_labels": list(class_dictionary.labels),
            "class_padded": class_dictionary.padded,
            "text_symbols": list(text_dictionary.symbols),
        })

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        text_dict = load_text_dictionary(cfg.text_dictionary or os.path.join(cfg.data, "dict.txt"))
        class_dict = ClassDictionary.load(os.path.join(cfg.data, f"labels.{cfg.labels}.txt"), cfg.pad_class_dictionary)
        logger.info(f"text dictionary: {len(text_dict)} symbols; classes: {class_dict.labels} "
                    f"-> {class_dict.num_outputs} head rows")
        return cls(cfg, text_dict, class_dict)

    def is_train_split(self, split: str) -> bool:
        return split in str(self.cfg.train_subset).split(",")

    @property
    def source_dictionary(self):
        return self.text_dictionary

    @property
    def target_dictionary(self):
        return None  # targets are class positions, not dictionary symbols

    def max_positions(self):
        return None

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, max_positions=None,
                           ignore_invalid_inputs=False, **kwargs):
        limits = [x for x in (max_tokens, max_positions if isinstance(max_positions, int) else None) if x]
        if limits:
            limit = min(limits)
            too_long = np.nonzero(dataset.sizes > limit)[0]
            if len(too_long):
                ids = [dataset.ids[i] if dataset.ids else str(i) for i in too_long]
                msg = (f"{len(too_long)} utterance(s) are longer than the batch limit {limit} "
                       f"({'samples' if hasattr(dataset, 'sample_rate') else 'tokens'}): {', '.join(ids[:20])}"
                       f"{' ...' if len(ids) > 20 else ''}")
                if self.cfg.long_utterances == "error":
                    raise ValueError(msg + ". Raise dataset.max_tokens (and max_tokens_valid), crop training audio "
                                           "with task.train_crop_samples, or set task.long_utterances=skip")
                logger.warning(msg + " -> skipped (task.long_utterances=skip); all ids: " + ", ".join(ids))
                max_positions, ignore_invalid_inputs = limit, True
        return super().get_batch_iterator(dataset, max_tokens=max_tokens, max_sentences=max_sentences,
                                          max_positions=max_positions, ignore_invalid_inputs=ignore_invalid_inputs,
                                          **kwargs)
