"""Knowledge-distortion probe (after MoNA, arXiv 2406.18864): how much knowledge of one modality survives
fine-tuning on the other, measured with a linear probe on frozen, pooled features.

For the probed modality (speech -> the s2c input path, text -> the t2c input path) every utterance of a train split
and an eval split goes through the frozen model (eval mode, no grad, full-length audio, fixed batch order) and is
pooled into one vector:

  encoder_mean   mean of the encoder output over the non-pad frames (speech) or tokens (text)   [default]
  decoder        the decoder output for the model's all-zero query (decoder_query models)
  classifier     the vector the model's class head reads, whatever its model.classifier (decoder output,
                 mean / attention-pooled / layer-weighted encoder output)
All pooling is the model's own (SpeechT5Classifier.pool, models/heads.py).

A standardised multinomial logistic regression (sklearn, lbfgs, fixed seed) is fitted on the train features and
scored on the eval features with SLUE macro-F1 (fixed label set, zero_division=0; metrics.py). The same
probe, with the same features of the same rows, runs on a reference checkpoint (typically the pretrained init the
fine-tuned model started from); delta = fine-tuned - reference says how much fine-tuning on the other modality
damaged (negative) or helped (positive) what the probed modality's features encode about the labels.

Both checkpoints are loaded like xmodal-evaluate does (evaluation/evaluate.py: the task of the probed modality over
the given data folder, the checkpoint's model config, class and text dictionaries checked against its task_state);
an official SpeechT5 checkpoint is imported on the fly for the probed task.
"""
import logging
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .. import metrics as M
from .. import modalities
from ..checkpoints import is_official_checkpoint, load_state
from ..files import atomic_write_json
from ..lineage import describe_path
from ..models import heads
from ..selectors import prefix
from .batches import each_row_once, row_ids
from .evaluate import EvaluationError, checkpoint_info, load_for_evaluation

logger = logging.getLogger(__name__)

FORMAT = "fairseq_xmodal.probe/1"
FEATURES = ("encoder_mean", "decoder", "classifier")
POOLING = {"encoder_mean": "mean of the encoder output over non-pad frames/tokens",
           "decoder": "decoder output of the all-zero query",
           "classifier": "the input of the model's class head (model.classifier)"}
CLASS_WEIGHTS = ("none", "balanced")
# The batch order of feature extraction never depends on the probe seed: the same rows give the same features.
EXTRACTION_SEED = 1


class ProbeError(ValueError):
    """A probe that cannot be run as asked; the message says what to change."""


@dataclass
class ProbeConfig:
    checkpoint: str
    modality: str  # speech | text: which input path of the model is probed
    data: str
    out_dir: str
    reference: Optional[str] = None
    train_split: str = "train"
    eval_split: Optional[str] = None  # default "valid"; must stay None with holdout
    holdout: Optional[float] = None  # fraction of train_split held out for evaluation, stratified and seeded
    features: str = "encoder_mean"
    seed: int = 1
    class_weight: str = "none"
    C: float = 1.0
    max_iter: int = 5000
    batch_size: Optional[int] = 8
    max_tokens: Optional[int] = None
    cpu: bool = False
    task_overrides: Dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False

    def validate(self):
        if self.modality not in modalities.MODALITIES:
            raise ProbeError(f"modality {self.modality!r}: use one of {', '.join(modalities.MODALITIES)}")
        if self.features not in FEATURES:
            raise ProbeError(f"features {self.features!r}: use one of {', '.join(FEATURES)}")
        if self.class_weight not in CLASS_WEIGHTS:
            raise ProbeError(f"class_weight {self.class_weight!r}: use one of {', '.join(CLASS_WEIGHTS)}")
        if self.holdout is not None:
            if not 0.0 < self.holdout < 1.0:
                raise ProbeError(f"holdout {self.holdout}: give the held-out fraction, strictly between 0 and 1")
            if self.eval_split is not None:
                raise ProbeError(f"holdout {self.holdout} evaluates on part of {self.train_split!r}; do not also give "
                                 f"an eval split ({self.eval_split!r})")
        elif self.eval_split == self.train_split:
            raise ProbeError(f"train and eval split are both {self.train_split!r}: the probe would be scored on its "
                             f"own training rows; use another eval split or a holdout fraction")
        if self.batch_size is None and self.max_tokens is None:
            raise ProbeError("give batch_size and/or max_tokens")
        if self.C <= 0 or self.max_iter < 1:
            raise ProbeError(f"C must be > 0 and max_iter >= 1 (got C={self.C}, max_iter={self.max_iter})")

    @property
    def task(self) -> str:
        return modalities.of_name(self.modality).task

    def resolved(self) -> "ProbeConfig":
        """A validated copy with the default eval split filled in."""
        cfg = replace(self, eval_split=self.eval_split or (None if self.holdout is not None else "valid"))
        cfg.validate()
        return cfg


@dataclass
class Features:
    x: np.ndarray  # [N, D] float64, row i = dataset index i
    y: np.ndarray  # [N] label positions
    ids: List[str]


# ----------------------------------------------------------------------------------------------------------------
# Loading


def load_probed_model(path: str, task_name: str, data: str, task_overrides: Optional[Dict[str, Any]],
                      features: str, tmp_dir: str):
    """-> (task, model in eval mode, checkpoint info). fairseq_xmodal checkpoints load as in xmodal-evaluate; an
    official SpeechT5 checkpoint is imported for `task_name` first (its weights in the probed path must all exist)."""
    try:
        task, model, state = load_for_evaluation(path, task_name, data, task_overrides)
        return task, model, checkpoint_info(state, path)
    except EvaluationError:
        if not (os.path.isfile(path) and is_official_checkpoint(load_state(os.path.abspath(path)))):
            raise
    from ..models.official import import_official

    out = os.path.join(tmp_dir, f"imported_{len(os.listdir(tmp_dir))}.pt")
    report = import_official(path, task_name, data, out)
    # the on-the-fly import is a decoder_query model: its classifier features are the decoder's
    used = [prefix(modalities.of_task(task_name).prenet), prefix("encoder")] + (
        [prefix("decoder")] if features in ("decoder", "classifier") else [])
    missing = [k for k in report["newly_initialised"] if k.startswith(tuple(used))]
    if missing:
        raise ProbeError(f"{path}: the official checkpoint has no weights for {len(missing)} parameters the {features} "
                         f"features of {task_name} need (e.g. {missing[0]}); probe a pretrain checkpoint instead")
    task, model, state = load_for_evaluation(out, task_name, data, task_overrides)
    info = checkpoint_info(state, out)
    info.update(path=os.path.abspath(path), kind="official", init=f"official {describe_path(path)}",
                imported_on_the_fly=True)
    return task, model, info


# ----------------------------------------------------------------------------------------------------------------
# Features


def pooled_features(model, net_input: Dict[str, Any], features: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """One batch -> (pooled vectors [B,D], non-pad frame/token counts [B]), pooled by the model (heads.py)."""
    try:
        pooled, enc, pad = model.encode_pooled(net_input, features)
    except ValueError as e:
        raise ProbeError(str(e)) from None
    return pooled, heads.masked_mean(enc, pad)[1]


def extract_features(task, model, split: str, features: str = "encoder_mean", batch_size: Optional[int] = 8,
                     max_tokens: Optional[int] = None, device: str = "cpu") -> Features:
    """Pooled features of every labelled row of `split`, exactly once each, in dataset order."""
    task.load_dataset(split)
    dataset = task.dataset(split)
    if getattr(dataset, "labels", None) is None:
        raise ProbeError(f"split {split!r} has no labels: {os.path.join(task.cfg.data, split + '.' + task.cfg.labels)} "
                         f"is missing, and a probe needs labelled rows")
    n = len(dataset)
    if n == 0:
        raise ProbeError(f"split {split!r} of {task.cfg.data} is empty")
    out: Dict[str, np.ndarray] = {}  # "x": [N, D], allocated at the first batch (D = the pooled width)
    empty: List[int] = []

    def step(sample, idx):
        pooled, counts = pooled_features(model, sample["net_input"], features)
        if "x" not in out:
            out["x"] = np.zeros((n, pooled.size(1)), dtype=np.float64)
        out["x"][idx] = pooled.double().cpu().numpy()
        empty.extend(idx[(counts == 0).cpu().numpy()].tolist())

    seen = each_row_once(task, dataset, step, f"probe features {split}", batch_size, max_tokens, device,
                         seed=EXTRACTION_SEED, model=model)
    ids = row_ids(dataset)
    if empty:
        raise ProbeError(f"split {split!r}: {len(empty)} rows have no encoder frames to pool (too short for the "
                         f"feature extractor?), e.g. {', '.join(ids[i] for i in empty[:5])}")
    if not (seen == 1).all():
        raise ProbeError(f"split {split!r}: {int((seen == 0).sum())} rows never encoded and {int((seen > 1).sum())} "
                         f"encoded more than once (an empty audio file?)")
    return Features(out["x"], np.asarray(dataset.labels, dtype=np.int64), ids)


# ----------------------------------------------------------------------------------------------------------------
# Splits, probe, scores


def holdout_split(y: np.ndarray, fraction: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded: round(fraction * n_c) rows of every class c go to eval (at least one, and at least one
    stays in train, for a class with two or more rows; a class with one row stays in train). -> (train, eval) indices."""
    rng = np.random.RandomState(seed)
    held: List[int] = []
    for c in np.unique(y):
        idx = np.nonzero(y == c)[0]
        idx = idx[rng.permutation(len(idx))]
        k = min(max(int(round(fraction * len(idx))), 1), len(idx) - 1) if len(idx) >= 2 else 0
        held += idx[:k].tolist()
    eval_idx = np.array(sorted(held), dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(y)), eval_idx)
    if not len(eval_idx):
        raise ProbeError(f"holdout {fraction} leaves no eval rows ({len(y)} rows); raise the fraction")
    return train_idx, eval_idx


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, seed: int, class_weight: str = "none",
              C: float = 1.0, max_iter: int = 5000) -> Tuple[np.ndarray, Dict[str, Any]]:
    """Standardise (train statistics) + multinomial logistic regression (lbfgs, deterministic) -> eval predictions."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(y_train)) < 2:
        raise ProbeError(f"the probe's training rows have a single class ({int(y_train[0])}); a probe needs two or more")
    clf = make_pipeline(StandardScaler(),
                        LogisticRegression(C=C, max_iter=max_iter, solver="lbfgs", random_state=seed,
                                           class_weight=None if class_weight == "none" else class_weight))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(x_train, y_train)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    lr = clf[-1]
    return clf.predict(x_eval).astype(np.int64), {"converged": converged, "n_iter": int(np.max(lr.n_iter_)),
                                                   "feature_dim": int(x_train.shape[1])}


def score(gold: np.ndarray, pred: np.ndarray, labels: List[str]) -> Dict[str, Any]:
    """SLUE scores (metrics.py), in percent, with per-class recall and the confusion matrix."""
    cm = M.confusion_matrix(gold, pred, len(labels))
    s = M.slue_scores(gold, pred, labels)
    per = M.per_class(cm, labels, s)
    return {**{k: 100.0 * s[k] for k in ("macro_f1", "accuracy", "macro_precision", "macro_recall")},
            "per_class_recall": {lab: 100.0 * per[lab]["recall"] for lab in labels},
            "per_class": {lab: {m: (100.0 * v if m in ("precision", "recall", "f1") else v) for m, v in row.items()}
                          for lab, row in per.items()},
            "confusion_matrix": {"rows": "gold", "columns": "predicted", "counts": cm.tolist()}}


def baselines(y_train: np.ndarray, y_eval: np.ndarray, labels: List[str]) -> Dict[str, Any]:
    """Majority (the train rows' most frequent label, first in label order on ties, for every eval row) and the
    expected scores of uniform random guessing (accuracy 1/K; per class F1 = 2 p/K / (p + 1/K), p = eval share)."""
    k = len(labels)
    majority = int(np.argmax(np.bincount(y_train, minlength=k)))
    maj = score(y_eval, np.full(len(y_eval), majority), labels)
    share = np.bincount(y_eval, minlength=k) / len(y_eval)
    f1 = np.where(share > 0, 2 * share / k / np.where(share > 0, share + 1.0 / k, 1.0), 0.0)
    return {"majority": {"label": labels[majority], "macro_f1": maj["macro_f1"], "accuracy": maj["accuracy"],
                         "per_class_recall": maj["per_class_recall"]},
            "uniform_random": {"macro_f1": 100.0 * float(f1.mean()), "accuracy": 100.0 / k, "expected": True}}


# ----------------------------------------------------------------------------------------------------------------
# Running a probe


def _probe_one(path: str, role: str, cfg: ProbeConfig, device: str, tmp_dir: str, splits: Dict[str, Any]):
    """-> (checkpoint info, labels, (train features, eval features)) of one model; the model is freed afterwards."""
    task, model, info = load_probed_model(path, cfg.task, cfg.data, cfg.task_overrides, cfg.features, tmp_dir)
    labels = list(task.class_dictionary.labels)
    kw = dict(features=cfg.features, batch_size=cfg.batch_size, max_tokens=cfg.max_tokens, device=device)
    logger.info(f"probe: {role} {path}: {cfg.features} features of {cfg.train_split}"
                f"{'' if cfg.holdout is not None else ' and ' + cfg.eval_split}")
    train = extract_features(task, model, cfg.train_split, **kw)
    if cfg.holdout is not None:
        if "indices" not in splits:
            splits["indices"] = holdout_split(train.y, cfg.holdout, cfg.seed)
        tr, ev = splits["indices"]
        feats = (Features(train.x[tr], train.y[tr], [train.ids[i] for i in tr]),
                 Features(train.x[ev], train.y[ev], [train.ids[i] for i in ev]))
    else:
        feats = (train, extract_features(task, model, cfg.eval_split, **kw))
    del model
    return info, labels, feats


def probe(cfg: ProbeConfig) -> Dict[str, Any]:
    """Run the probe on cfg.checkpoint (and cfg.reference); writes <out_dir>/probe.json and returns its content."""
    cfg = cfg.resolved()
    out_dir = os.path.abspath(cfg.out_dir)
    target = os.path.join(out_dir, "probe.json")
    if os.path.exists(target) and not cfg.overwrite:
        raise ProbeError(f"{target} exists; choose another --out or pass --overwrite")
    if not os.path.isdir(cfg.data):
        raise ProbeError(f"data folder {cfg.data} not found")
    device = "cuda" if torch.cuda.is_available() and not cfg.cpu else "cpu"
    roles = [("checkpoint", cfg.checkpoint)] + ([("reference", cfg.reference)] if cfg.reference else [])
    results: Dict[str, Any] = {}
    splits: Dict[str, Any] = {}
    rows = None
    with tempfile.TemporaryDirectory(prefix="xmodal-probe-") as tmp:
        for role, path in roles:
            info, labels, (train, ev) = _probe_one(path, role, cfg, device, tmp, splits)
            if rows is None:
                rows = (labels, train, ev)
            elif labels != rows[0] or train.ids != rows[1].ids or ev.ids != rows[2].ids \
                    or not (np.array_equal(train.y, rows[1].y) and np.array_equal(ev.y, rows[2].y)):
                raise ProbeError(f"{path} and {cfg.checkpoint} did not see the same labelled rows; both must be "
                                 f"probed over the same data folder with the same task arguments")
            pred, fit = fit_probe(train.x, train.y, ev.x, cfg.seed, cfg.class_weight, cfg.C, cfg.max_iter)
            results[role] = {"path": os.path.abspath(path), "info": info, **score(ev.y, pred, labels), "probe_fit": fit}
    labels, train, ev = rows
    warn = [f"{role}: the probe did not converge in {cfg.max_iter} iterations (raise --max-iter)"
            for role, r in results.items() if not r["probe_fit"]["converged"]]
    absent = [lab for i, lab in enumerate(labels) if not (train.y == i).any()]
    if absent:
        warn.append(f"labels never seen by the probe's training rows (their recall is 0): {', '.join(absent)}")
    ref = results.get("reference")
    delta = None if ref is None else {m: results["checkpoint"][m] - ref[m] for m in ("macro_f1", "accuracy")}
    if delta is not None:
        delta["per_class_recall"] = {lab: results["checkpoint"]["per_class_recall"][lab] - ref["per_class_recall"][lab]
                                     for lab in labels}
    dist = lambda y: {lab: int((y == i).sum()) for i, lab in enumerate(labels)}  # noqa: E731
    result = {
        "format": FORMAT,
        "modality": cfg.modality, "task": cfg.task, "features": cfg.features, "data": os.path.abspath(cfg.data),
        "splits": {"train": cfg.train_split, "eval": cfg.train_split if cfg.holdout is not None else cfg.eval_split,
                   "holdout": cfg.holdout},
        "seed": cfg.seed, "labels": labels, "units": "percent",
        "n_train": int(len(train.y)), "n_eval": int(len(ev.y)),
        "train_distribution": dist(train.y), "eval_distribution": dist(ev.y),
        "checkpoint": results["checkpoint"], "reference": ref, "delta": delta,
        "baselines": baselines(train.y, ev.y, labels),
        "probe": {"model": "StandardScaler + LogisticRegression (multinomial, lbfgs)", "C": cfg.C,
                  "max_iter": cfg.max_iter, "class_weight": cfg.class_weight, "random_state": cfg.seed},
        "extraction": {"pooling": POOLING[cfg.features],
                       "batch_size": cfg.batch_size, "max_tokens": cfg.max_tokens, "device": device,
                       "eval_mode": True, "full_length_audio": True, "batch_order_seed": EXTRACTION_SEED,
                       "task_overrides": dict(cfg.task_overrides)},
        "eval_ids": ev.ids if cfg.holdout is not None else None,
        "warnings": warn,
        "config": {k: v for k, v in asdict(cfg).items() if k != "overwrite"},
    }
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_json(result, target)
    return result


def table_lines(r: Dict[str, Any]) -> List[str]:
    """The printed summary: reference, fine-tuned, delta and baselines, macro-F1 / accuracy / per-class recall."""
    labels = r["labels"]
    split = (f"{r['splits']['train']} (holdout {r['splits']['holdout']:g})" if r["splits"]["holdout"] is not None
             else f"{r['splits']['eval']}")
    lines = [f"probe: {r['modality']} input ({r['task']}), {r['features']} features; train {r['splits']['train']} "
             f"({r['n_train']} rows) -> eval {split} ({r['n_eval']} rows); seed {r['seed']}"]
    name_w = max([28] + [len(f"{role} {describe_path(r[role]['path'])}") for role in ("reference", "checkpoint") if r[role]])
    head = f"  {'':{name_w}s}  {'macro-F1':>8s}  {'acc':>6s}  " + "  ".join(f"R:{lab:>8s}" for lab in labels)
    lines.append(head)

    def row(name, f1, acc, rec=None, sign=""):
        cells = "  ".join(f"{rec[lab]:{sign}10.2f}" if rec else f"{'':10s}" for lab in labels)
        return f"  {name:{name_w}s}  {f1:{sign}8.2f}  {acc:{sign}6.2f}  {cells}".rstrip()

    for role in ("reference", "checkpoint"):
        m = r[role]
        if m:
            lines.append(row(f"{role} {describe_path(m['path'])}", m["macro_f1"], m["accuracy"], m["per_class_recall"]))
    if r["delta"]:
        d = r["delta"]
        lines.append(row("delta (checkpoint - reference)", d["macro_f1"], d["accuracy"], d["per_class_recall"], "+"))
    b = r["baselines"]
    lines.append(row(f"majority ({b['majority']['label']})", b["majority"]["macro_f1"], b["majority"]["accuracy"],
                     b["majority"]["per_class_recall"]))
    lines.append(row("uniform random (expected)", b["uniform_random"]["macro_f1"], b["uniform_random"]["accuracy"]))
    return lines
