"""Classification scores from a confusion matrix (the criterion sums confusion counts in its logs; xmodal-evaluate and
the probe score whole splits), SLUE-style: macro averages over the FIXED label set, a class
never predicted (or never seen) contributes 0 (sklearn zero_division=0 with labels= fixed)."""
from typing import Dict, List, Sequence

import numpy as np


def confusion_matrix(gold: Sequence[int], pred: Sequence[int], num_labels: int) -> np.ndarray:
    cm = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(cm, (np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return cm


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def scores(cm: np.ndarray, labels: List[str]) -> Dict[str, float]:
    """cm[gold, pred] -> accuracy, macro P/R/F1 and per-class P/R/F1 (fractions in [0, 1], python floats)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    precision = _safe_div(tp, cm.sum(axis=0))
    recall = _safe_div(tp, cm.sum(axis=1))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    total = cm.sum()
    out = {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
    }
    for i, name in enumerate(labels):
        out[f"precision_{name}"] = float(precision[i])
        out[f"recall_{name}"] = float(recall[i])
        out[f"f1_{name}"] = float(f1[i])
    return out


def legacy_scores(cm: np.ndarray, labels: List[str]) -> Dict[str, float]:
    """The prior system's numbers (prior_system.md §6): sklearn macro P/R/F1 with zero_division=1 and NO fixed label
    list, i.e. averaged over the labels that occur in gold or predictions. A class that is never predicted scores
    precision 1, which inflates macro precision for majority-class predictors. Accuracy is unchanged."""
    cm = np.asarray(cm, dtype=np.float64)
    tp, gold, pred = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    present = (gold > 0) | (pred > 0)
    precision = np.where(pred > 0, tp / np.where(pred > 0, pred, 1), 1.0)
    recall = np.where(gold > 0, tp / np.where(gold > 0, gold, 1), 1.0)
    # sklearn's F1 = 2tp / (2tp + fp + fn); its denominator is never 0 for a present label.
    denom = 2 * tp + (pred - tp) + (gold - tp)
    f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 1.0)
    total = cm.sum()
    out = {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "macro_precision": float(precision[present].mean()) if present.any() else 0.0,
        "macro_recall": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
    }
    for i, name in enumerate(labels):
        if present[i]:
            out[f"precision_{name}"], out[f"recall_{name}"], out[f"f1_{name}"] = (
                float(precision[i]), float(recall[i]), float(f1[i]))
    return out


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
