"""`xmodal_mona`: target-task cross-entropy + a MoNA-style source-knowledge term (docs/methods/mona.md).

For a training batch of the TARGET modality (what the task trains on, e.g. text for t2c) whose rows also carry their
SOURCE-modality inputs (`task.paired_source_modality=true`, e.g. the same utterances' audio):

    L_task(theta)  = sum over the batch of CE(target rows)                   (exactly xmodal_classification's loss)
    theta'         = theta - alpha * grad_theta [L_task / B]                  (one simulated SGD step of the body,
                                                                               create_graph=True)
    z_i            = normalize(pool(encoder_theta'(source prenet(source row i))))
    align          = mean over same-class pairs i<j of ||z_i - z_j||^2           (Wang & Isola 2020, alpha=2)
    unif           = log mean over all pairs i<j of exp(-t ||z_i - z_j||^2)     (Wang & Isola 2020)
    loss           = L_task + lambda * B * (align + w_unif * unif)

theta = the body (encoder, or encoder+decoder: `mona_body`). B = rows of the batch, so after fairseq divides by the
summed sample size the gradient is that of mean CE + lambda * (align + w_unif * unif), for any update_freq. Because
theta' depends on the target prenet (and head) through grad_theta L_task, the term's gradient reaches the target
embedder (second order: -alpha * d/dphi [grad_theta L_task] . grad_theta' term).

The term is applied only in training, while the update count is below `mona_updates`; otherwise this criterion is
xmodal_classification (same loss, same logs) plus a `task_loss` log.
"""
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.criterions import register_criterion
from fairseq.dataclass import ChoiceEnum
from fairseq.logging import metrics
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..modalities import of_net_input
from ..models import heads, modules
from .classification import ClassificationCriterion, ClassificationCriterionConfig

BODY = ChoiceEnum(["encoder", "encoder_decoder"])
FEATURES = ChoiceEnum(["encoder_mean", "decoder", "classifier"])
BODY_PREFIXES = {"encoder": ("encoder.",), "encoder_decoder": ("encoder.", "decoder.")}


@dataclass
class MonaCriterionConfig(ClassificationCriterionConfig):
    mona_lambda: float = field(
        default=1.0, metadata={"help": "weight lambda of the source-knowledge term (align + mona_uniformity_weight * "
                                       "unif) per utterance; 0 = plain xmodal_classification"})
    mona_inner_lr: float = field(
        default=0.1, metadata={"help": "alpha of the simulated body update theta' = theta - alpha * grad L_task "
                                       "(plain SGD on the mean target CE of the batch)"})
    mona_updates: int = field(
        default=-1, metadata={"help": "apply the term during the first N updates only (update counts 0..N-1); "
                                      "0 = never; -1 = every update"})
    mona_uniformity_t: float = field(default=2.0, metadata={"help": "t of the uniformity loss (Wang & Isola: 2)"})
    mona_uniformity_weight: float = field(default=1.0, metadata={"help": "weight of unif relative to align"})
    mona_body: BODY = field(
        default="encoder", metadata={"help": "parameters of the simulated update: encoder (default) or "
                                             "encoder_decoder"})
    mona_features: FEATURES = field(
        default="encoder_mean",
        metadata={"help": "source features: encoder_mean = masked mean of the encoder output (default); decoder = "
                          "the decoder output for the all-zero query (decoder_query models); classifier = whatever "
                          "the model's class head reads (model.classifier; models/heads.py does all pooling)"})


def pair_sq_dists(z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Squared euclidean distances of all pairs i<j of rows of z [B,D] (differences, not 2-2<zi,zj>: no
    cancellation; no sqrt: finite gradient for identical rows) -> (d [P], i [P], j [P])."""
    i, j = torch.triu_indices(z.size(0), z.size(0), offset=1, device=z.device)
    return (z[i] - z[j]).pow(2).sum(-1), i, j


def alignment(z: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, int]:
    """Mean ||z_i - z_j||^2 over the pairs i<j with labels[i] == labels[j] -> (value, number of such pairs);
    (0, 0) when the batch has no same-class pair. z: normalised features [B,D]."""
    d, i, j = pair_sq_dists(z)
    same = labels[i] == labels[j]
    n = int(same.sum())
    return (d[same].mean() if n else z.new_zeros(())), n


def uniformity(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log mean_{i<j} exp(-t ||z_i - z_j||^2) (logsumexp, stable); 0 for fewer than two rows."""
    d, _, _ = pair_sq_dists(z)
    if d.numel() == 0:
        return z.new_zeros(())
    return torch.logsumexp(-t * d, dim=0) - math.log(d.numel())



@contextmanager
def twice_differentiable(model: torch.nn.Module):
    """Run the model on paths whose backward is itself differentiable (needed for create_graph=True), with the same
    values: attention through SDPA's math kernel (the CPU flash and CUDA fused kernels, and this repo's
    recomputing RelativePositionAttention, have no double backward), and no activation checkpointing (a recompute
    in backward would also run outside functional_call, i.e. with the unmodified parameters)."""
    saved = [(m, attr, getattr(m, attr)) for m in model.modules() for attr in ("recompute", "checkpoint_activations")
             if (attr == "recompute" and isinstance(m, modules.MultiheadAttention))
             or (attr == "checkpoint_activations" and isinstance(getattr(m, attr, None), bool))]
    try:
        for m, attr, _ in saved:
            setattr(m, attr, False)
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        for m, attr, old in saved:
            setattr(m, attr, old)


class _WithParams:
    """Stands in for the model in ClassificationCriterion.forward: the same forward with some parameters replaced."""

    def __init__(self, model, params: Dict[str, torch.Tensor]):
        self.model, self.params = model, params

    def __call__(self, **net_input):
        return functional_call(self.model, self.params, args=(), kwargs=net_input)


@register_criterion("xmodal_mona", dataclass=MonaCriterionConfig)
class MonaCriterion(ClassificationCriterion):
    """xmodal_classification + the MoNA-style term above. Logs everything xmodal_classification logs (`loss` is the
    optimised objective), plus task_loss (the CE alone, same units as loss), mona_align and mona_unif."""

    def __init__(self, task, cfg: MonaCriterionConfig):
        super().__init__(task)
        if cfg.mona_lambda < 0 or cfg.mona_inner_lr < 0 or cfg.mona_uniformity_t <= 0 or cfg.mona_updates < -1:
            raise ValueError(f"xmodal_mona: need mona_lambda >= 0, mona_inner_lr >= 0, mona_uniformity_t > 0 and "
                             f"mona_updates >= -1, got {cfg.mona_lambda}, {cfg.mona_inner_lr}, "
                             f"{cfg.mona_uniformity_t}, {cfg.mona_updates}")
        self.cfg = cfg
        self.body_prefixes = BODY_PREFIXES[str(cfg.mona_body)]
        self.num_updates = 0

    def set_num_updates(self, num_updates: int):
        """Update count of the step about to run (the s2c/t2c tasks call this from train_step)."""
        self.num_updates = num_updates

    def mona_active(self, model) -> bool:
        """True for training forwards (train mode, grad enabled) while num_updates < mona_updates (always for -1).
        The single place to tie the term to another schedule (e.g. the embedder warm-up stage)."""
        if self.cfg.mona_lambda == 0 or self.cfg.mona_updates == 0:
            return False
        if not (model.training and torch.is_grad_enabled()):
            return False
        return self.cfg.mona_updates < 0 or self.num_updates < self.cfg.mona_updates

    def forward(self, model, sample, reduce=True):
        rows = sample["target"].numel() if "target" in sample else 0
        if not (reduce and rows >= 2 and self.mona_active(model)):  # one row has no pairs: nothing to align
            loss, sample_size, log = super().forward(model, sample, reduce)
            log["task_loss"] = log["loss"]
            return loss, sample_size, log
        task_loss, sample_size, log, align, unif, n_same = self.mona_terms(model, sample)
        loss = task_loss + self.cfg.mona_lambda * sample_size * (align + self.cfg.mona_uniformity_weight * unif)
        log.update(heads.layer_weight_log(model, sample_size))  # the inner forward ran on a parameter stand-in
        log.update({"loss": loss.data, "task_loss": task_loss.data,
                    "mona_align": float(align.detach()) * sample_size, "_mona_align_n": sample_size if n_same else 0,
                    "mona_unif": float(unif.detach()) * sample_size, "_mona_n": sample_size})
        return loss, sample_size, log

    def body_params(self, model) -> Dict[str, torch.Tensor]:
        """theta: the body's parameters by name; a frozen one (requires_grad=False) as a detached leaf that requires
        grad, so grad_theta L_task exists (its outer gradient is discarded with the leaf)."""
        return {name: p if p.requires_grad else p.detach().requires_grad_()
                for name, p in model.named_parameters() if name.startswith(self.body_prefixes)}

    def mona_terms(self, model, sample):
        """-> (task loss [sum over the batch, graph into everything trainable], sample_size, logging output of
        xmodal_classification, align, unif, number of same-class pairs). align and unif carry the graph through
        theta' into the target prenet, head and (if trainable) body."""
        if "other_modality_net_input" not in sample:
            raise ValueError("xmodal_mona needs each training row in the other modality too: set "
                             "task.paired_source_modality=true (docs/methods/mona.md)")
        # groups without gradient now: frozen, or held at this update (embedder warm-up; models/freezing.py)
        no_grad = getattr(model, "no_grad_groups", None)
        no_grad = getattr(model, "frozen", frozenset()) if no_grad is None else no_grad
        prenet = of_net_input(sample["net_input"]).prenet
        if prenet in no_grad and "encoder" in no_grad:
            raise ValueError(f"xmodal_mona: {sorted(no_grad)} are frozen or held, so the encoder runs without "
                             f"gradient for this modality and there is no body gradient to simulate; unfreeze {prenet}")
        if "decoder." in self.body_prefixes and getattr(model, "decoder", None) is None:
            raise ValueError(f"xmodal_mona: mona_body=encoder_decoder, but model.classifier={model.classifier} "
                             f"builds no decoder; use mona_body=encoder")
        theta = self.body_params(model)
        if not theta:
            raise ValueError(f"xmodal_mona: the model has no parameters named {'/'.join(self.body_prefixes)}* (wrapped "
                             f"for distributed training? xmodal_mona supports single-process training only)")
        names = list(theta)
        with twice_differentiable(model):
            task_loss, sample_size, log = super().forward(_WithParams(model, theta), sample)
            grads = torch.autograd.grad(task_loss / sample_size, [theta[n] for n in names], create_graph=True,
                                        allow_unused=True)
            alpha = self.cfg.mona_inner_lr
            updated = {n: theta[n] if g is None else theta[n] - alpha * g for n, g in zip(names, grads)}
            feats = self.source_features(model, sample["other_modality_net_input"], updated)
        z = F.normalize(feats.to(torch.promote_types(feats.dtype, torch.float32)), dim=-1)  # fp16/bf16 -> fp32
        labels = sample.get("other_modality_target", sample["target"])
        align, n_same = alignment(z, labels)
        unif = uniformity(z, self.cfg.mona_uniformity_t)
        return task_loss, sample_size, log, align, unif, n_same

    def source_features(self, model, net_input, params: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """[B,D] features of the source-modality rows with the body's parameters replaced by `params` (full names;
        missing ones are the model's own). The source prenet runs without gradient: this term does not train it."""
        params = params or {}
        with torch.no_grad():
            if "source" in net_input:
                x, pad = model.speech_encoder_prenet(net_input["source"], net_input.get("padding_mask"))
            else:
                x, pad = model.text_encoder_prenet(net_input["src_tokens"])

        def sub(prefix):
            return {n[len(prefix):]: p for n, p in params.items() if n.startswith(prefix)}

        features = str(self.cfg.mona_features)
        need_layers = model.needs_layers(features)
        out = functional_call(model.encoder, sub("encoder."), (x, pad), {"return_layers": need_layers})
        enc, layers = out if need_layers else (out, None)
        return model.pool(enc, pad, layers, features=features, params=params)

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)

        def total(key):
            return sum(float(log.get(key, 0)) for log in logging_outputs)

        sample_size = total("sample_size")
        metrics.log_scalar("task_loss", total("task_loss") / max(sample_size, 1) / math.log(2), sample_size, round=3)
        for key, weight in (("mona_align", "_mona_align_n"), ("mona_unif", "_mona_n")):
            n = total(weight)
            if n:
                metrics.log_scalar(key, total(key) / n, n, round=4)
