"""Cross-modal retrieval on a paired split: how well a checkpoint's speech and text representations meet.

For every row i of the split, the pooled representation of its audio s_i and of its transcript t_i (model.pool with
`features`, the same pooling the class head and xmodal_align use; cosine similarity). Speech -> text: rank of t_i
among all transcripts by similarity to s_i (1 = best; ties count against the query: rank = 1 + number of OTHER rows
scoring >= the true one); text -> speech likewise. Reported: recall@1, recall@5 (percent of queries whose true
partner has rank <= k), mean rank, and chance (recall@k = k/N, mean rank = (N+1)/2), with a seeded bootstrap
interval over the queries. No labels are read. `xmodal-evaluate --retrieval` writes retrieval.json.
"""
import os
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from ..files import atomic_write_json
from ..progress import progress
from . import stats
from .evaluate import EvaluationError, load_for_evaluation

FORMAT = "fairseq_xmodal.retrieval/1"
KS = (1, 5)


def pooled(task, model, dataset, features: str, batch_size: int = 8) -> np.ndarray:
    """[N,D] pooled representations of every row of `dataset` (eval mode, full length, fixed order)."""
    n = len(dataset)
    out: Optional[np.ndarray] = None
    seen = np.zeros(n, dtype=np.int64)
    itr = task.get_batch_iterator(dataset, max_sentences=batch_size, required_batch_size_multiple=1, seed=1,
                                  num_workers=0, epoch=1).next_epoch_itr(shuffle=False)
    with torch.inference_mode():
        for sample in progress(itr, len(itr), "retrieval features", unit="batch"):
            if not sample:
                continue
            z = model.encode_pooled(sample["net_input"], features)[0].float().cpu().numpy()  # [B,D]
            out = np.zeros((n, z.shape[1]), dtype=np.float64) if out is None else out
            idx = sample["id"].cpu().numpy()
            out[idx] = z
            seen[idx] += 1
    if out is None or not (seen == 1).all():
        raise EvaluationError(f"retrieval: {int((seen != 1).sum())} rows not embedded exactly once")
    return out


def ranks(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Rank (1-based) of key i for query i under cosine similarity; ties count against the query. [N,D] x2 -> [N]."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    k = keys / np.maximum(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12)
    sim = q @ k.T  # [N,N]
    true = np.diag(sim)[:, None]
    return (sim >= true).sum(axis=1)  # the true key itself counts once: rank 1 when no other key scores as high


def summarise(r: np.ndarray, level: float = stats.DEFAULT_LEVEL, resamples: int = stats.DEFAULT_RESAMPLES,
              seed: int = stats.DEFAULT_SEED) -> Dict[str, Any]:
    """recall@k (percent), mean rank and their bootstrap intervals over queries, for ranks r [N]."""
    n = len(r)
    rng = np.random.default_rng(seed)
    boot = r[rng.integers(0, n, size=(resamples, n))]  # [R,N]
    out: Dict[str, Any] = {"n": n, "ci": {}}
    for k in KS:
        out[f"recall@{k}"] = 100.0 * float((r <= k).mean())
        out["ci"][f"recall@{k}"] = _percentiles(100.0 * (boot <= k).mean(axis=1), level)
    out["mean_rank"] = float(r.mean())
    out["ci"]["mean_rank"] = _percentiles(boot.mean(axis=1), level)
    return out


def _percentiles(values: np.ndarray, level: float):
    a = (1 - level) / 2
    return [float(np.quantile(values, a)), float(np.quantile(values, 1 - a))]


def chance(n: int) -> Dict[str, float]:
    return {**{f"recall@{k}": 100.0 * min(k, n) / n for k in KS}, "mean_rank": (n + 1) / 2}


def retrieval(checkpoint: str, data: str, split: str, out_dir: Optional[str] = None, features: str = "encoder_mean",
              batch_size: int = 8, overwrite: bool = False, level: float = stats.DEFAULT_LEVEL,
              resamples: int = stats.DEFAULT_RESAMPLES, seed: int = stats.DEFAULT_SEED) -> Dict[str, Any]:
    """Speech <-> text retrieval of `checkpoint` on `split` of `data`; writes <out_dir>/retrieval.json."""
    path = os.path.join(out_dir, "retrieval.json") if out_dir else None
    if path and os.path.exists(path) and not overwrite:
        raise EvaluationError(f"{path} exists; pass --overwrite to replace it")
    task, model, _ = load_for_evaluation(checkpoint, "s2c", data)
    task.load_dataset(split)
    speech = pooled(task, model, task.dataset(split), features, batch_size)
    # the transcripts of the same rows (t2c's loading); batching needs only the dataset's sizes and collater
    text = pooled(task, model, task.load_other_modality(split), features, batch_size)
    m: Dict[str, Any] = {"format": FORMAT, "checkpoint": os.path.abspath(checkpoint), "data": os.path.abspath(data),
                         "split": split, "features": features, "ci_level": level, "bootstrap_resamples": resamples,
                         "bootstrap_seed": seed, "chance": chance(len(speech))}
    m["speech_to_text"] = summarise(ranks(speech, text), level, resamples, seed)
    m["text_to_speech"] = summarise(ranks(text, speech), level, resamples, seed)
    if path:
        os.makedirs(out_dir, exist_ok=True)
        atomic_write_json(m, path)
    return m


def summary_lines(m: Dict[str, Any]) -> Sequence[str]:
    c = m["chance"]
    lines = []
    for name, key in (("speech->text", "speech_to_text"), ("text->speech", "text_to_speech")):
        r = m[key]
        lines.append(f"retrieval {name} on {m['split']} (n={r['n']}, {m['features']}): "
                     f"R@1 {r['recall@1']:.1f} [{r['ci']['recall@1'][0]:.1f}, {r['ci']['recall@1'][1]:.1f}] "
                     f"(chance {c['recall@1']:.1f}), R@5 {r['recall@5']:.1f} (chance {c['recall@5']:.1f}), "
                     f"mean rank {r['mean_rank']:.1f} (chance {c['mean_rank']:.1f})")
    return lines
