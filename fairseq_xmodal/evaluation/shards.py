"""Sharded evaluation: `xmodal-evaluate --shard i/n` on n processes (GPUs, nodes, array tasks), then
`xmodal-evaluate --merge <shard dirs> --out <dir>` writes the predictions.tsv and metrics.json that one unsharded
run would have written, byte for byte.

Shard i scores batches i, i+n, i+2n, ... of the fixed batch order of an unsharded run (fairseq's sharded iterator over
the same batch list), so every row is computed in the same padded batch as without sharding. Next to its own partial
predictions.tsv/metrics.json, a shard folder holds shard.json (what was evaluated, how) and shard.npz (its rows'
indices, ids, gold labels and float64 probabilities). The merge refuses shards of different evaluations, a missing or
repeated shard, and any row missing or scored twice."""
import json
import os
from typing import Any, Dict, Sequence, Tuple

import numpy as np

from ..files import atomic_write_json, write_together
from .evaluate import SHARD_FORMAT, EvaluationError, Predictions, compute_metrics, write_predictions

def parse_shard(text: str) -> Tuple[int, int]:
    """'i/n' -> (i, n), 0 <= i < n."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise EvaluationError(f"--shard {text!r}: write it as i/n, e.g. 0/4 for the first of 4 shards") from None
    if not (n >= 1 and 0 <= i < n):
        raise EvaluationError(f"--shard {text}: need 0 <= i < n")
    return i, n


def _read(shard_dir: str) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    path = os.path.join(shard_dir, "shard.json")
    try:
        with open(path) as f:
            meta = json.load(f)
        with np.load(os.path.join(shard_dir, "shard.npz"), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise EvaluationError(f"{shard_dir} is not a finished shard of xmodal-evaluate --shard ({e})") from None
    if meta.get("format") != SHARD_FORMAT:
        raise EvaluationError(f"{path}: not an evaluation shard ({meta.get('format')!r})")
    return meta, arrays


def merge(shard_dirs: Sequence[str], out_dir: str, overwrite: bool = False) -> Dict[str, Any]:
    """The shards of one evaluation -> out_dir/predictions.tsv and metrics.json, as one unsharded run writes them."""
    out_dir = os.path.abspath(out_dir)
    targets = [os.path.join(out_dir, n) for n in ("predictions.tsv", "metrics.json")]
    if any(os.path.exists(t) for t in targets) and not overwrite:
        raise EvaluationError(f"{out_dir} already holds predictions.tsv/metrics.json; choose another --out or "
                              f"pass --overwrite")
    shards = [_read(d) for d in shard_dirs]
    if not shards:
        raise EvaluationError("--merge needs the shard folders")
    first, _ = shards[0]
    same = ("count", "split_rows", "has_gold", "labels", "evaluation", "legacy_metrics", "majority_threshold", "ci")
    for (meta, _), d in zip(shards, shard_dirs):
        other = {k: meta.get(k) for k in same}, {k: v for k, v in meta["head"].items() if k != "rows"}
        if other != ({k: first.get(k) for k in same}, {k: v for k, v in first["head"].items() if k != "rows"}):
            raise EvaluationError(f"{d} is a shard of another evaluation than {shard_dirs[0]} (checkpoint, task, "
                                  f"data, split or settings differ)")
    indices = sorted(meta["index"] for meta, _ in shards)
    if indices != list(range(first["count"])):
        raise EvaluationError(f"shards {indices} given, but the evaluation has {first['count']}: give each of "
                              f"0..{first['count'] - 1} exactly once")
    n = first["split_rows"]
    seen = np.zeros(n, dtype=np.int64)
    ids = np.empty(n, dtype=object)
    gold = np.full(n, -1, dtype=np.int64)
    probs = np.zeros((n, len(first["labels"])), dtype=np.float64)
    for _, a in shards:
        seen[a["rows"]] += 1
        ids[a["rows"]], gold[a["rows"]], probs[a["rows"]] = a["ids"], a["gold"], a["probs"]
    if not (seen == 1).all():
        raise EvaluationError(f"{int((seen == 0).sum())} rows are in no shard and {int((seen > 1).sum())} in several")
    pred = Predictions([str(x) for x in ids], gold.tolist() if first["has_gold"] else None,
                       probs.argmax(axis=1).tolist(), probs)
    result = {**first["head"], "rows": n,
              **compute_metrics(pred, first["labels"], first["legacy_metrics"], first["majority_threshold"],
                                 *first["ci"]),
              "evaluation": first["evaluation"]}
    os.makedirs(out_dir, exist_ok=True)
    write_together({targets[0]: lambda tmp: write_predictions(tmp, pred, first["labels"]),  # both files or neither
                    targets[1]: lambda tmp: atomic_write_json(result, tmp)})
    return result
