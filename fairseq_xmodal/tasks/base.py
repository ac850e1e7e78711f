"""What s2c and t2c share: the data folder, the text and class dictionaries, and long-utterance policy."""
import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.tasks import FairseqTask
from omegaconf import II, MISSING

from .. import task_state
from ..data.class_dictionary import ClassDictionary
from ..data.paired_dataset import PairedDataset
from ..modalities import Modality
from ..models import freezing
from ..text_vocab import load_text_dictionary

logger = logging.getLogger(__name__)

LONG_POLICY = ChoiceEnum(["error", "skip", "crop"])


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
        metadata={"help": "an utterance longer than the batch limit (dataset.max_tokens, max_tokens_valid, max "
                          "positions): 'error' stops with its ids; 'skip' leaves it out and logs every skipped id; "
                          "'crop' (s2c training split only) trains on a random window of the limit's length, seeded "
                          "by (common.seed, epoch, index) - evaluation splits are never cropped, so there it is an "
                          "error. Nothing is ever dropped silently."},
    )
    paired_source_modality: bool = field(
        default=False,
        metadata={"help": "training splits also load each row in the other modality (t2c: its audio, s2c: its "
                          "transcript), same folder and rows, into sample['other_modality_net_input'] for the "
                          "criteria xmodal_mona and xmodal_align (docs/methods/mona.md, docs/methods/alignment.md)"},
    )
    train_subset: str = II("dataset.train_subset")
    max_tokens_valid: Optional[int] = II("dataset.max_tokens_valid")  # only to fail fast, see check_split_lengths
    seed: int = II("common.seed")


class DataInputError(ValueError):
    """A data-folder file (or a data setting) the task cannot use; the message names the file, line and fix.
    fairseq-hydra-train reports it as one line with exit status 2 (fairseq_patches.call_main), not as Hydra's
    traceback and exit 1; the xmodal-* commands, which catch ValueError, see a ValueError."""


def refusing_bad_data(fn):
    """For the task methods that read the data folder (setup_task, load_dataset, get_batch_iterator): the readers'
    ValueError / FileNotFoundError, whose messages name the file and the fix, become DataInputError."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DataInputError:
            raise
        except (ValueError, FileNotFoundError) as e:
            raise DataInputError(str(e).strip() or type(e).__name__) from e
    return wrapped


def check_data_folder(data: str) -> None:
    """task.data must be an existing folder. A relative path is read from the working directory, which
    fairseq-hydra-train changes to the run folder: say so, with the absolute path that was probably meant."""
    if os.path.isdir(data):
        return
    hint = ""
    if not os.path.isabs(data):
        original = None
        try:
            from hydra.core.hydra_config import HydraConfig
            from hydra.utils import get_original_cwd

            original = get_original_cwd() if HydraConfig.initialized() else None
        except (ImportError, ValueError):
            pass
        meant = os.path.abspath(os.path.join(original or os.getcwd(), data))
        moved = f", which Hydra set to the run folder (you started in {original})" if original and \
            os.path.realpath(original) != os.path.realpath(os.getcwd()) else ""
        hint = (f"; a relative path is read from the working directory {os.getcwd()}{moved}: pass an absolute path"
                + (f", e.g. task.data={meant}" if os.path.isdir(meant) else ""))
    raise DataInputError(f"task.data={data}: no such data folder{hint}")


class ClassificationTask(FairseqTask):
    cfg: ClassificationTaskConfig
    modality: Optional[Modality] = None  # the input this task reads (modalities.py); set by each task class

    def __init__(self, cfg: ClassificationTaskConfig, text_dictionary, class_dictionary: ClassDictionary):
        super().__init__(cfg)
        self.text_dictionary = text_dictionary
        self.class_dictionary = class_dictionary
        # Saved in every checkpoint: transfer, training and evaluation refuse data whose dictionaries differ.
        self.state.merge_state_dict(task_state.record(class_dictionary, text_dictionary))

    @classmethod
    @refusing_bad_data
    def setup_task(cls, cfg, **kwargs):
        check_data_folder(cfg.data)
        text_dict = load_text_dictionary(cfg.text_dictionary or os.path.join(cfg.data, "dict.txt"))
        class_dict = ClassDictionary.load(os.path.join(cfg.data, f"labels.{cfg.labels}.txt"), cfg.pad_class_dictionary)
        logger.info(f"text dictionary: {len(text_dict)} symbols; classes: {class_dict.labels} "
                    f"-> {class_dict.num_outputs} head rows")
        return cls(cfg, text_dict, class_dict)

    def is_train_split(self, split: str) -> bool:
        return split in str(self.cfg.train_subset).split(",")

    @property
    def target_prenet(self) -> Optional[str]:
        """The model group that embeds this task's input: speech_prenet (s2c) or text_prenet (t2c). The model gets it
        at build time: the selector `prenet` and the embedder warm-up mean this group."""
        return self.modality.prenet if self.modality is not None else None

    def load_other_modality(self, split: str):
        """The same rows of `split` in the other modality, loaded by the other modality's task (fairseq's registry, by
        its registered name) over the same data folder, dictionaries and labels: t2c pairs with s2c's
        SpeechClassDataset (16 kHz, no crop), s2c with t2c's TextClassDataset (<data>/spm_char.model, <split>.wrd)."""
        from fairseq.tasks import TASK_DATACLASS_REGISTRY, TASK_REGISTRY

        if self.modality is None:
            raise TypeError(f"no paired modality for task {type(self).__name__}")
        name = self.modality.other.task
        shared = dict(data=self.cfg.data, labels=self.cfg.labels, pad_class_dictionary=self.cfg.pad_class_dictionary,
                      text_dictionary=self.cfg.text_dictionary, train_subset="", seed=self.cfg.seed)
        sibling = TASK_REGISTRY[name](TASK_DATACLASS_REGISTRY[name](**shared), self.text_dictionary,
                                      self.class_dictionary)
        sibling.load_dataset(split)
        return sibling.datasets[split]

    def pair_with_other_modality(self, split: str) -> None:
        """Wrap the loaded `split` in a PairedDataset with the same rows in the other modality (data/paired_dataset.py)."""
        self.datasets[split] = PairedDataset(self.datasets[split], self.load_other_modality(split), split)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        """fairseq's forward/backward, inside the model's training stage for `update_num` (models/freezing.py):
        parameters held by model.freeze_updates or the embedder warm-up get no gradient."""
        if hasattr(criterion, "set_num_updates"):  # fairseq 0.12 tells only the model; xmodal_mona schedules by it
            criterion.set_num_updates(update_num)
        with freezing.training_step(model, optimizer, update_num):
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad, **kwargs)

    def optimizer_step(self, optimizer, model, update_num):
        freezing.drop_held_grads(model)  # held parameters reach the optimizer without a gradient: Adam skips them
        super().optimizer_step(optimizer, model, update_num)

    @property
    def source_dictionary(self):
        return self.text_dictionary

    @property
    def target_dictionary(self):
        return None  # targets are class positions, not dictionary symbols

    def max_positions(self):
        return None

    def check_split_lengths(self, split: str):
        """At load time, stop early (instead of at the first validation, maybe hours later) when an evaluation split
        has utterances over dataset.max_tokens_valid and the policy would refuse them at batching time."""
        try:
            limit = self.cfg.max_tokens_valid
        except Exception:  # an unresolvable ${dataset.max_tokens_valid} (task config used on its own)
            limit = None
        if self.is_train_split(split) or not isinstance(limit, int) or self.cfg.long_utterances == "skip":
            return  # skip reports them when batching; the limit is unknown outside a composed config
        dataset = self.datasets[split]
        too_long = np.nonzero(dataset.sizes > limit)[0]
        if len(too_long):
            self._long_utterances(dataset, too_long, limit)

    def split_of(self, dataset) -> Optional[str]:
        return next((name for name, ds in self.datasets.items() if ds is dataset), None)

    @refusing_bad_data
    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, max_positions=None,
                           ignore_invalid_inputs=False, **kwargs):
        """fairseq's length-bucketed batching (dataset.sizes: samples for s2c, tokens for t2c; a batch holds at most
        max_tokens padded units, so many short or one long utterance), with the long-utterance policy applied first
        and a check that every remaining utterance is in some batch."""
        n_skipped = 0
        limits = [x for x in (max_tokens, max_positions if isinstance(max_positions, int) else None) if x]
        if limits:
            limit = min(limits)
            too_long = np.nonzero(dataset.sizes > limit)[0]
            if len(too_long):
                n_skipped = self._long_utterances(dataset, too_long, limit)
                if n_skipped:
                    max_positions, ignore_invalid_inputs = limit, True
        epoch_iter = super().get_batch_iterator(dataset, max_tokens=max_tokens, max_sentences=max_sentences,
                                                max_positions=max_positions,
                                                ignore_invalid_inputs=ignore_invalid_inputs, **kwargs)
        if not callable(epoch_iter.batch_sampler):  # batches are fixed now (rebuild_batches=false, the default)
            n_batched = sum(len(b) for b in epoch_iter.batch_sampler)
            if n_batched != len(dataset) - n_skipped:
                raise ValueError(
                    f"only {n_batched} of {len(dataset) - n_skipped} utterances of {self.split_of(dataset)} are in a "
                    f"batch: fairseq drops the last (longest) batch when its size is not a multiple of "
                    f"dataset.required_batch_size_multiple; set dataset.required_batch_size_multiple=1")
        return epoch_iter

    def _long_utterances(self, dataset, too_long: np.ndarray, limit: int) -> int:
        """Apply task.long_utterances to the utterances `too_long` (indices); returns how many will be skipped."""
        split = self.split_of(dataset)
        unit = "samples" if hasattr(dataset, "sample_rate") else "tokens"
        names = getattr(dataset, "ids", None)
        ids = [names[i] if names else str(i) for i in too_long]
        msg = (f"{split or 'dataset'}: {len(too_long)} utterance(s) are longer than the batch limit {limit} {unit} "
               f"(longest {int(dataset.sizes[too_long].max())}): {', '.join(ids[:20])}{' ...' if len(ids) > 20 else ''}")
        policy = self.cfg.long_utterances
        if policy == "skip":
            logger.warning(msg + " -> skipped (task.long_utterances=skip); all ids: " + ", ".join(ids))
            return len(too_long)
        if policy == "crop":
            training = split is not None and self.is_train_split(split)
            if training and hasattr(dataset, "crop_to"):
                dataset.crop_to(limit)
                logger.warning(msg + f" -> each epoch trains on a random {limit}-{unit} window of them "
                                     f"(task.long_utterances=crop, seeded by common.seed, epoch and index)")
                return 0
            why = ("evaluation splits are never cropped (scores are always on full utterances)" if hasattr(dataset, "crop_to")
                   else "only speech (s2c) training audio can be cropped")
            raise ValueError(msg + f". task.long_utterances=crop does not apply here: {why}. Raise the limit "
                                   f"(dataset.max_tokens_valid for validation/evaluation) or set "
                                   f"task.long_utterances=skip to leave them out with a report")
        raise ValueError(msg + ". Raise dataset.max_tokens (and max_tokens_valid), or choose task.long_utterances="
                               "crop (random training windows of the limit's length) or skip (leave them out, "
                               "reported)")
