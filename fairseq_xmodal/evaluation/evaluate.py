"""Evaluate any fairseq_xmodal checkpoint under either task on any split: same-modality, or zero-shot cross-modal
(an s2c checkpoint on transcripts, a t2c checkpoint on audio).

The task is built for the REQUESTED task name over the requested data folder (never the checkpoint's), its class
and text dictionaries are checked against the checkpoint's task_state, the model is built from the checkpoint's
cfg.model and loaded strictly. Evaluation is deterministic: eval mode, full-length audio (no split counts as the
training split, so the s2c task never crops), batches in a fixed order, required_batch_size_multiple=1, and every
row is predicted exactly once (asserted).

Outputs in `out_dir`: predictions.tsv (id, gold, predicted, p_<label> for each real label) and metrics.json.
"""
import copy
import csv
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .. import metrics as M
from .. import task_state
from ..checkpoints import is_official_checkpoint, is_xmodal_checkpoint, load_state, make_cfg
from ..files import atomic_write_json, atomic_write_with, write_together
from ..lineage import describe_init_file, describe_path, init_file, transfer_label
from ..modalities import TASKS
from ..models import heads
from ..task_state import CARRIED_TASK_FIELDS
from . import stats
from .batches import BatchingError, each_row_once, row_ids

logger = logging.getLogger(__name__)

FORMAT = "fairseq_xmodal.metrics/1"
# No real split has this name, so ClassificationTask.is_train_split() is False for every split we load.
NO_TRAIN_SPLIT = "<xmodal-evaluate: no training split>"


class EvaluationError(ValueError):
    """Bad checkpoint / data combination; the message names the file to fix."""


@dataclass
class EvalConfig:
    checkpoint: str
    task: str  # task to evaluate under: s2c (audio) or t2c (transcripts)
    data: str
    split: str
    out_dir: str
    batch_size: Optional[int] = 8
    max_tokens: Optional[int] = None
    legacy_metrics: bool = False
    cpu: bool = False
    task_overrides: Dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    majority_threshold: float = 0.95
    shard: Optional[Tuple[int, int]] = None  # (i, n): only every n-th batch from the i-th (shards.py merges them)
    ci_level: float = stats.DEFAULT_LEVEL
    bootstrap_resamples: int = stats.DEFAULT_RESAMPLES
    bootstrap_seed: int = stats.DEFAULT_SEED


@dataclass
class Predictions:
    ids: List[str]
    gold: Optional[List[int]]  # None for a split without label file
    pred: List[int]
    probs: np.ndarray  # [N, n_labels], softmax over the real labels
    rows: Optional[List[int]] = None  # dataset rows of a shard, in order (None: every row of the split)


# ----------------------------------------------------------------------------------------------------------------
# Loading


def load_for_evaluation(checkpoint: str, task_name: str, data: str, task_overrides: Optional[Dict[str, Any]] = None):
    """-> (task, model in eval mode, checkpoint state). The task is `task_name` over `data`, whatever the
    checkpoint's own task."""
    if task_name not in TASKS:
        raise EvaluationError(f"task {task_name!r}: use one of {', '.join(TASKS)}")
    if not os.path.isdir(data):
        raise EvaluationError(f"data folder {data} not found")
    state = load_state(os.path.abspath(checkpoint))
    if not is_xmodal_checkpoint(state):
        hint = ("an official SpeechT5 checkpoint: convert it first with xmodal-import-official"
                if is_official_checkpoint(state) else "not written by fairseq_xmodal")
        raise EvaluationError(f"{checkpoint} is {hint}")
    ck_task = state["cfg"]["task"]
    task_dict = {"_name": task_name, "data": os.path.abspath(data),
                 **{f: ck_task[f] for f in CARRIED_TASK_FIELDS if f in ck_task},
                 **(task_overrides or {}),
                 "long_utterances": "error",  # evaluation drops nothing
                 "train_subset": NO_TRAIN_SPLIT}
    cfg = make_cfg(task_dict, copy.deepcopy(state["cfg"]["model"]),
                   seed=(state["cfg"].get("common") or {}).get("seed", 1))
    from fairseq import checkpoint_utils, tasks

    task = tasks.setup_task(cfg.task)
    task_state.check_dictionaries(state, checkpoint, task, error=EvaluationError)
    # fairseq's own loader (build_model, num_updates, strict load_state_dict) over the state read safely above (no
    # second read of the file) and with OUR cfg: the requested task over the requested data, the checkpoint's model
    (model,), _, _ = checkpoint_utils.load_model_ensemble_and_task([os.path.abspath(checkpoint)], task=task,
                                                                   strict=True, state={**state, "cfg": cfg})
    model.eval()
    return task, model, state


# ----------------------------------------------------------------------------------------------------------------
# Prediction


def predict(task, model, split: str, batch_size: Optional[int] = 8, max_tokens: Optional[int] = None,
            device: str = "cpu", shard: Optional[Tuple[int, int]] = None) -> Predictions:
    """Every row of `split` exactly once, in a fixed batch order; argmax over the real labels only.
    shard=(i, n): only batches i, i+n, i+2n, ... of that same order (fairseq's sharded iterator), so that every row
    is computed in the same batch as without sharding and merged shards equal the unsharded output exactly."""
    if batch_size is None and max_tokens is None:
        raise EvaluationError("give batch_size and/or max_tokens")
    task.load_dataset(split)
    dataset = task.dataset(split)
    n = len(dataset)
    label_rows = task.class_dictionary.label_rows.to(device)
    probs = np.zeros((n, task.class_dictionary.num_labels), dtype=np.float64)
    gold = np.full(n, -1, dtype=np.int64)

    def step(sample, idx):
        out = model(**sample["net_input"])
        logits = (out[0] if isinstance(out, (tuple, list)) else out)[:, label_rows].float()
        probs[idx] = torch.softmax(logits, dim=-1).cpu().double().numpy()
        if "target" in sample:
            gold[idx] = sample["target"].cpu().numpy()

    try:
        seen = each_row_once(task, dataset, step, f"evaluate {split}", batch_size, max_tokens, device, shard,
                             model=model)
    except BatchingError as e:  # the task's long-utterance message names training options
        raise EvaluationError(f"{e}\nxmodal-evaluate never drops or crops rows: raise --max-tokens or leave it "
                              f"unset (then only --batch-size limits a batch)") from None
    mine = np.nonzero(seen == 1)[0]
    if shard is not None and (seen <= 1).all():
        seen[seen == 0] = 1  # rows of the other shards
    if not (seen == 1).all():
        missing, twice = np.nonzero(seen == 0)[0], np.nonzero(seen > 1)[0]
        raise EvaluationError(f"split {split}: {len(missing)} rows never predicted (e.g. {missing[:5].tolist()}) and "
                              f"{len(twice)} predicted more than once; an empty audio file or a batching bug")
    ids = row_ids(dataset)
    has_gold = getattr(dataset, "labels", None) is not None
    if shard is not None:
        return Predictions([ids[i] for i in mine], gold[mine].tolist() if has_gold else None,
                           probs[mine].argmax(axis=1).tolist(), probs[mine], rows=mine.tolist())
    return Predictions(ids, gold.tolist() if has_gold else None, probs.argmax(axis=1).tolist(), probs)


# ----------------------------------------------------------------------------------------------------------------
# Metrics and outputs


def compute_metrics(pred: Predictions, labels: List[str], legacy: bool = False,
                    majority_threshold: float = 0.95, ci_level: float = stats.DEFAULT_LEVEL,
                    resamples: int = stats.DEFAULT_RESAMPLES, seed: int = stats.DEFAULT_SEED) -> Dict[str, Any]:
    """Headline numbers (percent) in the chosen mode plus both full score sets, confusion matrix, distribution,
    seeded bootstrap intervals of the SLUE scores and the chance baselines of this split."""
    counts = {lab: int(sum(1 for p in pred.pred if p == i)) for i, lab in enumerate(labels)}
    out: Dict[str, Any] = {"labels": list(labels), "units": "percent",
                           "metrics_mode": "legacy" if legacy else "slue",
                           "predicted_distribution": counts,
                           "predicted_fraction": {k: v / max(len(pred.pred), 1) for k, v in counts.items()}}
    warning = M.majority_warning(counts, majority_threshold)
    out["warnings"] = [warning["message"]] if warning else []
    out["single_label"] = warning or None
    if pred.gold is None:
        out.update(accuracy=None, macro_precision=None, macro_recall=None, macro_f1=None)
        return out
    cm = M.confusion_matrix(pred.gold, pred.pred, len(labels))
    slue, legacy_s = M.slue_scores(pred.gold, pred.pred, labels), M.legacy_scores(pred.gold, pred.pred, labels)
    head = legacy_s if legacy else slue
    out.update({k: 100.0 * head[k] for k in ("accuracy", "macro_precision", "macro_recall", "macro_f1")})
    out["per_class"] = {k: {m: (100.0 * v if m in ("precision", "recall", "f1") else v) for m, v in row.items()}
                        for k, row in M.per_class(cm, labels, head).items()}
    out["confusion_matrix"] = {"rows": "gold", "columns": "predicted", "labels": list(labels), "counts": cm.tolist()}
    out["slue"] = {k: 100.0 * v for k, v in slue.items()}
    out["legacy"] = {k: 100.0 * v for k, v in legacy_s.items()}
    out["legacy"]["definition"] = ("prior system: sklearn average='macro', zero_division=1, labels = union of gold "
                                   "and predicted labels")
    out["slue"]["definition"] = "sklearn average='macro', zero_division=0, labels = the fixed class dictionary"
    # Intervals are of the SLUE scores (legacy scores drop labels per resample, so they have no stable definition).
    out.update(stats.bootstrap_intervals(pred.gold, pred.pred, labels, ci_level, resamples, seed))
    out["ci_metrics"] = "slue"
    out["baselines"] = stats.baselines(pred.gold, labels, ci_level, resamples, seed)
    return out


def write_predictions(path: str, pred: Predictions, labels: List[str]):
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["id", "gold", "predicted"] + [f"p_{lab}" for lab in labels])
        for i, uid in enumerate(pred.ids):
            gold = labels[pred.gold[i]] if pred.gold is not None else ""
            w.writerow([uid, gold, labels[pred.pred[i]]] + [f"{p:.6f}" for p in pred.probs[i]])


def checkpoint_info(state: Dict[str, Any], path: str) -> Dict[str, Any]:
    """Where the checkpoint came from, read from its own cfg/provenance and the sidecar of its init file."""
    cfg = state["cfg"]
    hist = state.get("optimizer_history") or [{}]
    ck = cfg.get("checkpoint") or {}
    prov = (state.get("extra_state") or {}).get("xmodal_provenance") or {}
    num_updates = hist[-1].get("num_updates", 0) or 0
    info = {"path": os.path.abspath(path), "task": cfg["task"]["_name"], "data": cfg["task"].get("data"),
            "num_updates": num_updates, "train_subset": None, "finetune_from_model": None,
            "seed": (cfg.get("common") or {}).get("seed")}
    if "transfer" in prov:
        info.update(kind="transfer", init=transfer_label(prov["transfer"]))
    elif "import_official" in prov:
        info.update(kind="official", init=f"official {describe_path(prov['import_official'].get('source', '?'))}")
    else:
        init = init_file(ck)
        info.update(kind="trained", train_subset=(cfg.get("dataset") or {}).get("train_subset"),
                    finetune_from_model=init, init=describe_init_file(init))
    return info


SHARD_FORMAT = "fairseq_xmodal.eval_shard/1"  # shards.py reads and merges what write_shard writes


def write_shard(out_dir: str, shard: Tuple[int, int], split_rows: int, pred: Predictions, labels: List[str],
                head: Dict[str, Any], evaluation: Dict[str, Any], legacy: bool, majority_threshold: float,
                ci: Tuple[float, int, int]) -> None:
    """ci: (level, resamples, seed) of the bootstrap intervals, so that the merge computes the same ones."""
    gold = np.asarray(pred.gold if pred.gold is not None else [-1] * len(pred.ids), dtype=np.int64)
    arrays = dict(rows=np.asarray(pred.rows, dtype=np.int64), ids=np.asarray(pred.ids, dtype=str), gold=gold,
                  probs=pred.probs)

    def save(tmp: str):
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
            np.savez(f, **arrays)

    atomic_write_with(save, os.path.join(out_dir, "shard.npz"))
    atomic_write_json({"format": SHARD_FORMAT, "index": shard[0], "count": shard[1], "split_rows": split_rows,
                       "has_gold": pred.gold is not None, "labels": list(labels), "head": head,
                       "evaluation": evaluation, "legacy_metrics": legacy, "majority_threshold": majority_threshold,
                       "ci": list(ci)},
                      os.path.join(out_dir, "shard.json"))


def evaluate_checkpoint(cfg: EvalConfig) -> Dict[str, Any]:
    """Run one evaluation; writes predictions.tsv and metrics.json into cfg.out_dir and returns the metrics."""
    if not 0 < cfg.ci_level < 1 or cfg.bootstrap_resamples < 2:
        raise EvaluationError(f"--ci-level must be in (0, 1) and --bootstrap at least 2 (got {cfg.ci_level}, "
                              f"{cfg.bootstrap_resamples})")
    if not 0 < cfg.majority_threshold <= 1:
        raise EvaluationError(f"--majority-threshold must be in (0, 1] (got {cfg.majority_threshold})")
    out_dir = os.path.abspath(cfg.out_dir)
    targets = [os.path.join(out_dir, n) for n in ("predictions.tsv", "metrics.json")]
    if any(os.path.exists(t) for t in targets) and not cfg.overwrite:
        raise EvaluationError(f"{out_dir} already holds predictions.tsv/metrics.json; choose another --out or "
                              f"pass --overwrite")
    device = "cuda" if torch.cuda.is_available() and not cfg.cpu else "cpu"
    task, model, state = load_for_evaluation(cfg.checkpoint, cfg.task, cfg.data, cfg.task_overrides)
    pred = predict(task, model, cfg.split, cfg.batch_size, cfg.max_tokens, device, cfg.shard)
    labels = list(task.class_dictionary.labels)
    head = {"format": FORMAT,
            "checkpoint": checkpoint_info(state, cfg.checkpoint),
            "task": cfg.task, "cross_modal": state["cfg"]["task"]["_name"] != cfg.task,
            "data": os.path.abspath(cfg.data), "split": cfg.split, "rows": len(pred.ids),
            "classifier": heads.describe(model)}  # kind; layer_weighted: its softmax layer weights
    evaluation = {"batch_size": cfg.batch_size, "max_tokens": cfg.max_tokens, "device": device,
                  "full_length_audio": True, "task_overrides": dict(cfg.task_overrides),
                  # how padded speech rows were computed: "masked" scores do not depend on batch_size/max_tokens
                  "feature_padding": str(model.speech_encoder_prenet.feature_padding)}
    ci = (cfg.ci_level, cfg.bootstrap_resamples, cfg.bootstrap_seed)  # the merge of shards uses the same intervals
    os.makedirs(out_dir, exist_ok=True)
    if cfg.shard is not None:  # one part of a sharded evaluation: shards.merge makes the whole of it
        split_rows = len(task.dataset(cfg.split))
        write_shard(out_dir, cfg.shard, split_rows, pred, labels, head, evaluation, cfg.legacy_metrics,
                    cfg.majority_threshold, ci)
    result = {**head, **compute_metrics(pred, labels, cfg.legacy_metrics, cfg.majority_threshold, *ci),
              "evaluation": evaluation}
    if cfg.shard is not None:
        result["shard"] = {"index": cfg.shard[0], "count": cfg.shard[1], "rows_of_split": split_rows}
    # both files or neither: a metrics.json must never describe other predictions than the predictions.tsv beside it
    write_together({targets[0]: lambda tmp: write_predictions(tmp, pred, labels),
                    targets[1]: lambda tmp: atomic_write_json(result, tmp)})
    return result


def summary_line(m: Dict[str, Any]) -> str:
    ck = m["checkpoint"]
    head = f"{ck['task']} checkpoint on {m['task']} {m['split']} ({m['rows']} rows, {m['metrics_mode']} metrics)"
    weights = (m.get("classifier") or {}).get("layer_weights")
    tail = ("; layer weights " + " ".join(f"{k} {v:.3f}" for k, v in weights.items())) if weights else ""
    if m.get("accuracy") is None:
        return head + ": no gold labels; predicted " + json.dumps(m["predicted_distribution"]) + tail
    line = (head + f": ACC {m['accuracy']:.2f}  P {m['macro_precision']:.2f}  R {m['macro_recall']:.2f}  "
                   f"F1 {m['macro_f1']:.2f}")
    if m.get("ci"):
        lo, hi = m["ci"]["macro_f1"]
        maj = m["baselines"]["majority"]
        line += (f" [{100 * m['ci_level']:.0f}% CI {lo:.2f}, {hi:.2f}]; majority baseline F1 {maj['macro_f1']:.2f} "
                 f"[{maj['ci']['macro_f1'][0]:.2f}, {maj['ci']['macro_f1'][1]:.2f}]")
    return line + tail
