"""Conditions of a report: evaluations and training runs grouped over seeds (n, mean, std, 95% interval per metric),
and the comparisons between conditions and against the majority-class baseline (report.py writes them)."""
import csv
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import seeds, stats

METRICS = {"accuracy": "accuracy", "precision": "macro_precision", "recall": "macro_recall", "f1": "macro_f1"}
EVAL_KEY = ["init", "data_variant", "model_task", "task", "split", "metrics"]
GROUP_COLUMNS = (["condition", "init", "data_variant", "model_task", "task", "cross_modal", "split", "rows", "n",
                  "seeds"] + [f"{m}{s}" for m in METRICS for s in ("", "_std", "_lo", "_hi")]
                 + ["interval", "majority_f1", "f1_lo_above_majority", "note"])
LEARNING_GROUP_COLUMNS = ["condition", "task", "init", "train_subset", "shots", "n", "seeds", "best_valid_macro_f1",
                          "best_valid_macro_f1_std", "best_valid_macro_f1_lo", "best_valid_macro_f1_hi"]


def _seed(row: Dict[str, Any], name_key: str, seed_key: str):
    return row.get("seed") if row.get("seed") is not None else seeds.seed_in(row[name_key], seed_key)


def eval_groups(results: List[Dict[str, Any]], seed_key: str = "seed",
                group_by: Optional[Sequence[str]] = None) -> List[Tuple[seeds.Group, Dict[str, Any]]]:
    """Evaluations -> [(group, its table row)]. group_by: the row fields that define a condition besides the name
    without its seed token (default: init, data variant, model task, task, split, metrics mode); give
    e.g. ["init", "task", "split"] to group rows whose names differ."""
    by_name = group_by is None
    fields = EVAL_KEY if by_name else list(group_by)
    condition = (lambda r: seeds.strip_seed(r["name"], seed_key)) if by_name else (
        lambda r: " ".join(f"{f}={r.get(f)}" for f in fields))
    out = []
    for g in seeds.group(results, condition, lambda r: _seed(r, "name", seed_key), () if not by_name else fields):
        first = g.rows[0]
        row = {k: first.get(k) for k in ("init", "data_variant", "model_task", "task", "cross_modal", "split", "rows",
                                          "shots")}
        row.update(condition=g.condition, n=g.n, seeds=",".join(str(x) for x in g.seeds),
                   interval=seeds.interval_kind(g, "bootstrap over utterances" if first["ci"] else "none"))
        for col, key in METRICS.items():
            row.update(seeds.summary(g, col, lambda r, key=key: r["ci"].get(key)))
        maj = [r["majority_f1"] for r in g.rows if r.get("majority_f1") is not None]
        row["majority_f1"] = max(maj) if maj else None
        if row["majority_f1"] is not None and row["f1_lo"] is not None:
            row["f1_lo_above_majority"] = "yes" if row["f1_lo"] > row["majority_f1"] else "NO"
        row["note"] = "; ".join(x for x in [seeds.duplicate_seed_note(g)] + [r["note"] for r in g.rows] if x)
        out.append((g, row))
    return out


def learning_groups(speeds: List[Dict[str, Any]], seed_key: str = "seed") -> List[Dict[str, Any]]:
    out = []
    for g in seeds.group(speeds, lambda s: seeds.strip_seed(s["run"], seed_key),
                         lambda s: s.get("seed") if s.get("seed") is not None else seeds.seed_in(s["run"], seed_key),
                         ("task", "train_subset", "init", "valid_subset")):
        first = g.rows[0]
        row = {k: first.get(k) for k in ("task", "init", "train_subset", "shots", "valid_subset")}
        pct = seeds.Group(g.key, g.condition, [{"v": 100 * r["best_valid_macro_f1"]} if r["best_valid_macro_f1"]
                                               is not None else {} for r in g.rows], g.seeds)
        summ = seeds.summary(pct, "v")
        row.update(condition=g.condition, n=g.n, seeds=",".join(str(x) for x in g.seeds), label=g.condition,
                   curves=[r["curve"] for r in g.rows], **{f"best_valid_macro_f1{k[1:]}": v for k, v in summ.items()})
        out.append(row)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Comparisons


def _predictions_reader(results: List[Dict[str, Any]]):
    """row -> (ids, gold, pred, num_labels) from the predictions.tsv beside its metrics.json."""
    cache: Dict[str, Tuple] = {}

    def read(row):
        path = os.path.join(os.path.dirname(row["source"]), "predictions.tsv")
        if path not in cache:
            labels = json.load(open(row["source"]))["labels"]
            with open(path) as f:
                rows = sorted(csv.DictReader(f, delimiter="\t"), key=lambda r: r["id"])
            if any(not r["gold"] for r in rows):
                raise ValueError(f"{path} has no gold labels")
            code = {lab: i for i, lab in enumerate(labels)}
            cache[path] = ([r["id"] for r in rows], [code[r["gold"]] for r in rows],
                           [code[r["predicted"]] for r in rows], len(labels))
        return cache[path]

    return read


def comparisons(groups: List[Tuple[seeds.Group, Dict[str, Any]]], results: List[Dict[str, Any]],
                pairs: Sequence[Tuple[str, str]], alpha: float = seeds.ALPHA,
                permutations: int = stats.DEFAULT_PERMUTATIONS) -> List[Dict[str, Any]]:
    """Named pairs of conditions (each matched on the same task and split), then every group against the
    majority-class baseline of its split."""
    read = _predictions_reader(results)
    by_cond: Dict[str, List[Tuple[seeds.Group, Dict[str, Any]]]] = {}
    for g, row in groups:
        by_cond.setdefault(g.condition, []).append((g, row))
    out = []
    for a, b in pairs:
        for name in (a, b):
            if name not in by_cond and name != seeds.BASELINE:
                raise ValueError(f"--compare {a}={b}: no condition {name!r}; conditions: {', '.join(sorted(by_cond))}")
        matched = False
        for ga, ra in by_cond[a]:
            cands = [(gb, rb) for gb, rb in by_cond.get(b, []) if (rb["task"], rb["split"]) == (ra["task"], ra["split"])]
            for gb, rb in cands if b != seeds.BASELINE else [(None, None)]:
                out.append(_compare(ga, gb, ra, b, read, alpha, permutations))
                matched = True
        if not matched:
            raise ValueError(f"--compare {a}={b}: the two conditions share no evaluation split (task and split)")
    named = {(r["a"], r["b"], r["task"], r["split"]) for r in out}
    for g, row in groups:
        if (g.condition, seeds.BASELINE, row["task"], row["split"]) not in named:
            out.append(_compare(g, None, row, seeds.BASELINE, read, alpha, permutations))
    return out


def _compare(ga, gb, ra, name_b, read, alpha, permutations):
    baseline = (lambda r: r["majority_f1"]) if gb is None else None
    return seeds.compare(ga, gb, "f1", name_b, read, baseline, alpha, {"task": ra["task"], "split": ra["split"]},
                         permutations)
