"""`xmodal_align`: paired speech-text alignment, no sentiment labels (docs/methods/alignment.md).

A batch of the s2c task with `task.paired_source_modality=true` holds B utterances as audio (`net_input`, batched by
dataset.max_tokens on the speech side) and the same utterances' transcripts (`other_modality_net_input`, same rows, same
order; data/paired_dataset.py); under t2c the roles swap (text drives batching), the loss is the same. With z = normalize(model.pool(model.encode(x), features=align_features)) [B,D]:

    S          = z_speech @ z_text^T / tau                                    [B,B]  (in-batch negatives)
    L_nce      = sum_i 1/2 (CE(S[i,:], i) + CE(S[:,i], i))                     (symmetric InfoNCE, CLIP-style)
    L_ctc      = sum_i CTC(log_softmax(ctc_proj(encoder(speech_i))), chars_i)  (optional: align_ctc_weight > 0)
    loss       = L_nce + align_ctc_weight * L_ctc,         sample_size = B

tau = exp(log_tau): fixed (align_temperature) or learned (align_learn_temperature, clamped to >= 0.01 as in CLIP).
The CTC head maps encoder frames to the text dictionary (blank = <ctc_blank>); it lives in the criterion (fairseq
trains and checkpoints criterion parameters) and can start from the official pre-training's `encoder.proj`
(align_ctc_init). Labels are never read.
The criterion refuses a training split named dev* or test* (alignment uses fine-tune pairs only).
"""
import logging
import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.logging import metrics
from omegaconf import II

from ..models import heads

logger = logging.getLogger(__name__)

FEATURES = ChoiceEnum(["classifier", "encoder_mean", "decoder"])
HELD_OUT = ("dev", "test")  # SLUE's reporting splits: never aligned on
MIN_TAU = 0.01


@dataclass
class AlignCriterionConfig(FairseqDataclass):
    align_features: FEATURES = field(
        default="classifier",
        metadata={"help": "pooled representation to align (models/speecht5.py pool): classifier = what the class "
                          "head reads (the zero-query decoder output for decoder_query); encoder_mean = masked mean of "
                          "the encoder output; decoder = the zero-query decoder output"})
    align_temperature: float = field(default=0.1, metadata={"help": "InfoNCE temperature tau (start value if "
                                                                     "learned)"})
    align_learn_temperature: bool = field(
        default=True, metadata={"help": "learn log(tau) (a criterion parameter, checkpointed), tau >= 0.01"})
    align_ctc_weight: float = field(
        default=0.0, metadata={"help": "weight of a CTC term on the speech encoder against the transcript's "
                                       "characters (0 = off: no CTC head is built)"})
    align_ctc_init: Optional[str] = field(
        default=None, metadata={"help": "official SpeechT5 checkpoint (speecht5_base.pt) whose CTC head encoder.proj "
                                        "initialises the CTC head (shapes checked; the import into the classifier "
                                        "ignores that key, this stage keeps it); default: a fresh head"})
    encoder_embed_dim: int = II("model.encoder_embed_dim")


@register_criterion("xmodal_align", dataclass=AlignCriterionConfig)
class AlignCriterion(FairseqCriterion):
    """Logs loss (optimised objective, bits per utterance), nce_loss, ctc_loss, tau and s2t_acc (in-batch recall@1
    speech -> text)."""

    def __init__(self, task, cfg: AlignCriterionConfig):
        super().__init__(task)
        if cfg.align_temperature < MIN_TAU or cfg.align_ctc_weight < 0:
            raise ValueError(f"xmodal_align: need align_temperature >= {MIN_TAU} and align_ctc_weight >= 0, got "
                             f"{cfg.align_temperature} and {cfg.align_ctc_weight}")
        splits = [s for s in str(getattr(task.cfg, "train_subset", "")).split(",") if s]
        bad = [s for s in splits if s.split(".")[0] in HELD_OUT]
        if bad:
            raise ValueError(f"xmodal_align: dataset.train_subset={','.join(splits)} includes {', '.join(bad)}; "
                             f"alignment trains on fine-tune pairs only (e.g. dataset.train_subset=train), never on "
                             f"dev/test")
        if not getattr(task.cfg, "paired_source_modality", False):
            raise ValueError("xmodal_align needs each row in both modalities: set task.paired_source_modality=true")
        self.cfg = cfg
        log_tau = torch.tensor(math.log(cfg.align_temperature))
        if cfg.align_learn_temperature:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)
        dictionary = task.text_dictionary
        self.blank = dictionary.index("<ctc_blank>")
        self.pad = dictionary.pad()
        # speech frames [B,T,D] -> characters [B,T,V]: the role of the official encoder.proj
        self.ctc_proj = nn.Linear(cfg.encoder_embed_dim, len(dictionary)) if cfg.align_ctc_weight > 0 else None
        if cfg.align_ctc_init:
            self.load_official_ctc_head(cfg.align_ctc_init)

    def load_official_ctc_head(self, path: str) -> None:
        """encoder.proj.{weight,bias} of an official checkpoint -> the CTC head (the official pre-training's CTC
        layer over the same dictionary); any other shape is an error naming the file."""
        from ..checkpoints import is_official_checkpoint, load_state

        if self.ctc_proj is None:
            raise ValueError(f"criterion.align_ctc_init={path} needs criterion.align_ctc_weight > 0")
        state = load_state(path)
        model = state.get("model") or {}
        if not is_official_checkpoint(state) or "encoder.proj.weight" not in model:
            raise ValueError(f"criterion.align_ctc_init={path}: not an official SpeechT5 checkpoint with encoder.proj")
        w, b = model["encoder.proj.weight"], model.get("encoder.proj.bias")
        if tuple(w.shape) != tuple(self.ctc_proj.weight.shape) or b is None or b.shape != self.ctc_proj.bias.shape:
            raise ValueError(f"criterion.align_ctc_init={path}: encoder.proj.weight is {tuple(w.shape)}, the CTC head "
                             f"needs {tuple(self.ctc_proj.weight.shape)} (text dictionary x model dim): another "
                             f"dict.txt or model size")
        with torch.no_grad():
            self.ctc_proj.weight.copy_(w)
            self.ctc_proj.bias.copy_(b)
        logger.info(f"xmodal_align: CTC head <- encoder.proj.weight, encoder.proj.bias of {path}")

    def load_state_dict(self, state_dict, strict=True):
        """A checkpoint written by another criterion (the imported init, a classifier run) has no criterion state:
        then tau starts at align_temperature and the CTC head at its seeded init, which is logged."""
        if state_dict is None:
            logger.info(f"xmodal_align: the checkpoint has no criterion state; tau starts at "
                        f"{self.cfg.align_temperature}" + (", the CTC head fresh" if self.ctc_proj is not None else ""))
            return
        return super().load_state_dict(state_dict, strict=strict)

    def tau(self) -> torch.Tensor:
        return self.log_tau.clamp(min=math.log(MIN_TAU)).exp()

    def features(self, model, net_input) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (pooled [B,D], encoder output [B,T,D], padding mask [B,T]) for either modality's net_input."""
        return model.encode_pooled(net_input, str(self.cfg.align_features))

    def forward(self, model, sample, reduce=True):
        if "other_modality_net_input" not in sample:
            raise ValueError("xmodal_align: this batch carries no transcripts (sample['other_modality_net_input']); only "
                             "training splits are paired, so run alignment with dataset.disable_validation=true")
        speech, text = sample["net_input"], sample["other_modality_net_input"]
        if "source" not in speech:  # t2c_align: the text side drives batching
            speech, text = text, speech
        z_s, enc_s, pad_s = self.features(model, speech)
        z_t, _, _ = self.features(model, text)
        nce, acc = info_nce(z_s, z_t, self.tau())
        loss = nce
        log: Dict[str, float] = {"nce_loss": nce.data, "_s2t_correct": acc, "tau": float(self.tau().detach()) * len(z_s)}
        if self.ctc_proj is not None:
            ctc = self.ctc_loss(enc_s, pad_s, text["src_tokens"])
            loss = loss + self.cfg.align_ctc_weight * ctc
            log["ctc_loss"] = ctc.data
        n = z_s.size(0)
        log.update({"loss": loss.data, "ntokens": sample.get("ntokens", n), "nsentences": n, "sample_size": n})
        if model.needs_layers(str(self.cfg.align_features)):  # the weights this stage trains, as classification logs them
            log.update(heads.layer_weight_log(model, n))
        return loss, n, log

    def ctc_loss(self, enc, pad, tokens) -> torch.Tensor:
        """Sum over the batch of CTC(speech frames -> transcript characters); enc [B,T,D], pad [B,T], tokens [B,U]."""
        lprobs = F.log_softmax(self.ctc_proj(enc).float(), dim=-1).transpose(0, 1)  # [T,B,V]
        frames = (~pad).sum(-1) if pad is not None else enc.new_full((enc.size(0),), enc.size(1), dtype=torch.long)
        chars = tokens != self.pad
        return F.ctc_loss(lprobs, tokens[chars], frames, chars.sum(-1), blank=self.blank, reduction="sum",
                          zero_infinity=True)

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        def total(key):
            return sum(float(log.get(key, 0)) for log in logging_outputs)

        n = total("sample_size")
        metrics.log_scalar("loss", total("loss") / max(n, 1) / math.log(2), n, round=3)
        metrics.log_scalar("nce_loss", total("nce_loss") / max(n, 1) / math.log(2), n, round=3)
        if any("ctc_loss" in log for log in logging_outputs):
            metrics.log_scalar("ctc_loss", total("ctc_loss") / max(n, 1) / math.log(2), n, round=3)
        metrics.log_scalar("tau", total("tau") / max(n, 1), n, round=4)
        metrics.log_scalar("s2t_acc", total("_s2t_correct") / max(n, 1), n, round=4)
        heads.reduce_layer_weights(logging_outputs, n, metrics.log_scalar)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


def info_nce(z_speech: torch.Tensor, z_text: torch.Tensor, tau: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """Symmetric InfoNCE summed over the B pairs (rows i of both are one utterance): z_* [B,D] (any scale; cosine),
    tau scalar -> (loss, number of speech rows whose nearest text row is their own)."""
    a = F.normalize(z_speech.float(), dim=-1)
    b = F.normalize(z_text.float(), dim=-1)
    logits = a @ b.t() / tau  # [B,B]
    target = torch.arange(a.size(0), device=a.device)
    loss = 0.5 * (F.cross_entropy(logits, target, reduction="sum") + F.cross_entropy(logits.t(), target,
                                                                                       reduction="sum"))
    return loss, int((logits.argmax(-1) == target).sum())
