"""Classification scores, SLUE-style: macro averages over the FIXED label set, a class never predicted (or never seen)
contributes 0 (sklearn zero_division=0 with labels= fixed). Offline (evaluation, probe): sklearn's
precision_recall_fscore_support on the predictions. During training: the same definition from summed confusion counts
(`scores`), because fairseq's logs must be summable across batches and workers."""
from typing import Dict, List, Sequence

import numpy as np


def confusion_matrix(gold: Sequence[int], pred: Sequence[int], num_labels: int) -> np.ndarray:
    """cm[gold, pred] over label positions 0..num_labels-1 (sklearn, with the label list fixed)."""
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    if len(gold):
        cm += sk_confusion_matrix(gold, pred, labels=list(range(num_labels)))
    return cm


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def _flat(accuracy: float, precision, recall, f1, labels: List[str], present=None) -> Dict[str, float]:
    """Macro means over `present` (default: all labels) and per-class entries for those labels."""
    present = np.ones(len(labels), dtype=bool) if present is None else present
    any_ = bool(present.any())
    out = {"accuracy": accuracy,
           "macro_precision": float(np.mean(precision[present])) if any_ else 0.0,
           "macro_recall": float(np.mean(recall[present])) if any_ else 0.0,
           "macro_f1": float(np.mean(f1[present])) if any_ else 0.0}
    for i, name in enumerate(labels):
        if present[i]:
            out[f"precision_{name}"], out[f"recall_{name}"], out[f"f1_{name}"] = (
                float(precision[i]), float(recall[i]), float(f1[i]))
    return out


def scores(cm: np.ndarray, labels: List[str]) -> Dict[str, float]:
    """From SUMMED confusion counts cm[gold, pred] (the criterion's fairseq logs, which must stay summable across
    batches and workers): accuracy, macro P/R/F1 and per-class P/R/F1 (fractions in [0, 1], python floats).
    The same definition as slue_scores; offline evaluation uses that one (sklearn on the predictions)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    precision = _safe_div(tp, cm.sum(axis=0))
    recall = _safe_div(tp, cm.sum(axis=1))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    total = cm.sum()
    return _flat(float(tp.sum() / total) if total else 0.0, precision, recall, f1, labels)


def slue_scores(gold: Sequence[int], pred: Sequence[int], labels: List[str]) -> Dict[str, float]:
    """SLUE: sklearn precision_recall_fscore_support over the FIXED label set, zero_division=0; keys as `scores`."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    if not len(gold):
        return scores(np.zeros((len(labels), len(labels))), labels)
    p, r, _, _ = precision_recall_fscore_support(gold, pred, labels=list(range(len(labels))), average=None,
                                                 zero_division=0)
    # F1 as the criterion's logs compute it from the same P and R (2PR / (P + R)): sklearn's 2tp / (2tp + fp + fn)
    # is the same number but may differ in the last bit, and a run's logged valid F1 and its offline F1 must agree
    f1 = _safe_div(2 * p * r, p + r)
    return _flat(float(accuracy_score(gold, pred)), p, r, f1, labels)


def legacy_scores(gold: Sequence[int], pred: Sequence[int], labels: List[str]) -> Dict[str, float]:
    """The prior system's numbers (prior_system.md §6): sklearn macro P/R/F1 with zero_division=1 and NO fixed label
    list, i.e. averaged over the labels that occur in gold or predictions. A class that is never predicted scores
    precision 1, which inflates macro precision for majority-class predictors. Accuracy is unchanged. Per-class
    entries only for the labels that occur."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    present = np.zeros(len(labels), dtype=bool)
    if not len(gold):
        return _flat(0.0, present, present, present, labels, present)
    occurring = np.union1d(np.asarray(gold), np.asarray(pred)).astype(np.int64)  # sklearn's own label set
    p, r, f, _ = precision_recall_fscore_support(gold, pred, average=None, zero_division=1)
    present[occurring] = True
    full = [np.zeros(len(labels)) for _ in range(3)]
    for dst, src in zip(full, (p, r, f)):
        dst[occurring] = src
    return _flat(float(accuracy_score(gold, pred)), *full, labels, present)


def per_class(cm: np.ndarray, labels: List[str], flat: Dict[str, float]) -> Dict[str, Dict[str, float]]:
    """{label: {precision, recall, f1, support, predicted}} from `scores`/`legacy_scores` output (a metric is absent
    where legacy scoring left the label out)."""
    cm = np.asarray(cm)
    out = {}
    for i, name in enumerate(labels):
        row = {m: flat[f"{m}_{name}"] for m in ("precision", "recall", "f1") if f"{m}_{name}" in flat}
        row.update(support=int(cm[i].sum()), predicted=int(cm[:, i].sum()))
        out[name] = row
    return out


def majority_warning(counts: Dict[str, int], threshold: float = 0.95) -> Dict[str, object]:
    """Flags a model that predicts (almost) one label for everything, the prior system's silent failure mode."""
    total = sum(counts.values())
    if not total:
        return {}
    label, n = max(counts.items(), key=lambda kv: kv[1])
    if n / total < threshold:
        return {}
    return {"label": label, "fraction": n / total, "threshold": threshold,
            "message": f"{n}/{total} predictions ({100 * n / total:.1f}%) are {label!r}: the model predicts "
                       f"{label} for (almost) everything"}
