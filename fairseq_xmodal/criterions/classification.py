"""Cross-entropy over the real labels only, with SLUE-style metrics summed across batches and workers."""
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import metrics

from ..metrics import scores
from ..models import heads

CM_KEY = re.compile(r"^_cm:(.+):(.+)$")


@dataclass
class ClassificationCriterionConfig(FairseqDataclass):
    pass


@register_criterion("xmodal_classification", dataclass=ClassificationCriterionConfig)
class ClassificationCriterion(FairseqCriterion):
    """Sum-reduced CE with sample_size = #utterances, so update_freq x batch equals one big batch exactly.
    Logs loss, accuracy, macro_precision/recall/f1 and per-class recall (fractions) from summed confusion counts;
    for model.classifier=layer_weighted also layer_w_<state>, the softmax weight of each encoder state (sample-weighted
    means over the logged batches, so they still sum to one)."""

    def __init__(self, task):
        super().__init__(task)
        self.labels = list(task.class_dictionary.labels)
        self.label_rows = task.class_dictionary.label_rows

    def label_logits(self, net_output) -> torch.Tensor:
        logits = net_output[0] if isinstance(net_output, (tuple, list)) else net_output
        return logits[:, self.label_rows.to(logits.device)]  # [B, n_labels]: padding rows never compete

    def forward(self, model, sample, reduce=True):
        if "target" not in sample:
            raise ValueError("this batch has no labels: training and validation splits need <split>.<labels> files")
        logits = self.label_logits(model(**sample["net_input"]))
        target = sample["target"]
        loss = F.cross_entropy(logits.float(), target, reduction="sum" if reduce else "none")
        pred = logits.argmax(dim=-1)
        n = len(self.labels)
        cm = torch.bincount(target * n + pred, minlength=n * n).view(n, n).cpu()
        log = {"loss": loss.data, "ntokens": sample["ntokens"], "nsentences": target.numel(),
               "sample_size": target.numel()}
        for g, gold in enumerate(self.labels):
            for p, hyp in enumerate(self.labels):
                log[f"_cm:{gold}:{hyp}"] = int(cm[g, p])
        log.update(heads.layer_weight_log(model, target.numel()))
        return loss, target.numel(), log

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        loss = sum(float(log.get("loss", 0)) for log in logging_outputs)
        metrics.log_scalar("loss", loss / max(sample_size, 1) / np.log(2), sample_size, round=3)
        heads.reduce_layer_weights(logging_outputs, sample_size, metrics.log_scalar)
        labels = []
        for key in logging_outputs[0] if logging_outputs else []:
            m = CM_KEY.match(key)
            if m and m.group(1) not in labels:
                labels.append(m.group(1))
        for g in labels:
            for p in labels:
                key = f"_cm:{g}:{p}"
                metrics.log_scalar_sum(key, sum(int(log.get(key, 0)) for log in logging_outputs))
        if not labels:
            return

        def derived(name):
            def fn(meters):
                cm = np.array([[meters[f"_cm:{g}:{p}"].sum for p in labels] for g in labels], dtype=np.float64)
                return round(scores(cm, labels)[name], 4)
            return fn

        for name in ["accuracy", "macro_f1", "macro_precision", "macro_recall"] + [f"recall_{g}" for g in labels]:
            metrics.log_derived(name, derived(name))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
