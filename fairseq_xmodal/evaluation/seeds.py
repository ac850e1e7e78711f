"""Seed groups and comparisons, shared by xmodal-report (evaluations and training runs) and xmodal-sweep-table (jobs).

A *condition* is what a row is with its seed removed: for a named row (a run or evaluation folder) the name without
its seed token (`seed2/t2c_k8`, `t2c_k8_seed2`, `t2c_k8.seed=2` -> `t2c_k8`; the token's key is `--seed-key`, default
`seed`), for a sweep job its overrides without the seed override (`common.seed=2`). Rows of one condition (and equal
`--group-by` fields) form one group: n, mean, std and the 95% t-interval over seeds of each metric; a group of one
keeps that row's own interval (bootstrap over utterances).

Comparisons are of macro-F1 between two groups on the same split: both single-seed -> a paired test on the
per-utterance predictions (approximate randomisation); otherwise a paired t-test over shared seeds, or Welch's t-test.
A group against the majority-class baseline of its split uses the same tests with the baseline's constant predictions.
"""
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import stats

ALPHA = 0.05
BASELINE = "majority"  # the reserved condition name of the majority-class baseline in --compare A=majority


def seed_pattern(key: str = "seed") -> "re.Pattern":
    """`<sep>seed<sep?>N` anywhere in a name, e.g. seed3, seed=3, seed-3, _seed3, /seed3/."""
    return re.compile(rf"(?:^|(?<=[/_.,-])){re.escape(key)}[=_-]?(\d+)(?=$|[/_.,-])")


def seed_in(name: str, key: str = "seed") -> Optional[int]:
    m = seed_pattern(key).search(name or "")
    return int(m.group(1)) if m else None


def strip_seed(name: str, key: str = "seed") -> str:
    """The name without its seed token and the separator it leaves behind."""
    out = seed_pattern(key).sub("", name or "")
    out = re.sub(r"([/_.,-])[/_.,-]+", r"\1", out)
    return out.strip("/_.,-") or name


@dataclass
class Group:
    key: Tuple
    condition: str
    rows: List[Dict[str, Any]] = field(default_factory=list)
    seeds: List[Any] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.rows)

    def values(self, metric: str) -> Dict[Any, float]:
        """{seed: value} (rows without a seed are numbered by position)."""
        return {(s if s is not None else f"#{i}"): r[metric] for i, (s, r) in enumerate(zip(self.seeds, self.rows))
                if isinstance(r.get(metric), (int, float))}


def group(rows: Sequence[Dict[str, Any]], condition: Callable[[Dict[str, Any]], str],
          seed: Callable[[Dict[str, Any]], Any], fields: Sequence[str] = ()) -> List[Group]:
    """Rows -> groups of equal (condition, fields), in first-seen order."""
    groups: Dict[Tuple, Group] = {}
    for r in rows:
        cond = condition(r)
        key = (cond,) + tuple(str(r.get(f)) for f in fields)
        g = groups.setdefault(key, Group(key, cond))
        g.rows.append(r)
        g.seeds.append(seed(r))
    for g in groups.values():  # rows in seed order (the table lists them so)
        order = sorted(range(g.n), key=lambda i: _seed_order(g.seeds[i]))
        g.rows, g.seeds = [g.rows[i] for i in order], [g.seeds[i] for i in order]
    return list(groups.values())


def _seed_order(s):
    if s is None:
        return (2, 0, "")
    try:
        return (0, float(s), "")
    except (TypeError, ValueError):
        return (1, 0, str(s))


def summary(g: Group, metric: str, single_ci: Optional[Callable[[Dict[str, Any]], Optional[List[float]]]] = None,
            level: float = stats.DEFAULT_LEVEL) -> Dict[str, Any]:
    """{metric, metric_std, metric_lo, metric_hi} over the group's seeds; n = 1 keeps single_ci(row) (or none)."""
    vals = list(g.values(metric).values())
    s = stats.t_summary(vals, level)
    ci = s["ci"]
    if s["n"] == 1 and single_ci is not None:
        ci = single_ci(g.rows[0])
    return {metric: s["mean"], f"{metric}_std": s["std"],
            f"{metric}_lo": ci[0] if ci else None, f"{metric}_hi": ci[1] if ci else None}


def interval_kind(g: Group, single: str = "bootstrap") -> str:
    return f"t over {g.n} seeds" if g.n > 1 else single


def duplicate_seed_note(g: Group) -> str:
    known = [s for s in g.seeds if s is not None]
    dup = sorted({s for s in known if known.count(s) > 1}, key=str)
    return f"seed {', '.join(map(str, dup))} occurs more than once in this group" if dup else ""


# ----------------------------------------------------------------------------------------------------------------
# Comparisons


COMPARISON_COLUMNS = ["a", "b", "task", "split", "metric", "n_a", "n_b", "a_value", "b_value", "difference",
                      "diff_lo", "diff_hi", "test", "p_value", "verdict"]


def parse_pairs(specs: Sequence[str]) -> List[Tuple[str, str]]:
    pairs = []
    for s in specs:
        a, sep, b = s.partition("=")
        if not sep or not a.strip() or not b.strip():
            raise ValueError(f"--compare {s!r}: write CONDITION_A=CONDITION_B (or A={BASELINE})")
        pairs.append((a.strip(), b.strip()))
    return pairs


def compare(a: Group, b: Optional[Group], metric: str, name_b: str,
            predictions: Optional[Callable[[Dict[str, Any]], Tuple[List[str], List[int], List[int], int]]] = None,
            baseline: Optional[Callable[[Dict[str, Any]], float]] = None, alpha: float = ALPHA,
            extra: Optional[Dict[str, Any]] = None, permutations: int = stats.DEFAULT_PERMUTATIONS) -> Dict[str, Any]:
    """One comparison row. b None = the majority baseline (`baseline(row)` gives its value on the row's split).
    predictions(row) -> (ids, gold, pred, num_labels) for the paired test of single-seed groups."""
    va = a.values(metric)
    row: Dict[str, Any] = {"a": a.condition, "b": name_b, "metric": metric, "n_a": len(va), **(extra or {})}

    def read(r):
        if predictions is None:  # xmodal-sweep-table: training logs, no per-utterance predictions
            raise ValueError("one seed per condition and no per-utterance predictions here; run >= 2 seeds per "
                             "condition, or compare the evaluations' predictions with xmodal-report --compare")
        return predictions(r)

    try:
        if b is None:
            vb = {s: baseline(r) for s, r in zip(va, a.rows)}
            row.update(n_b=1, b_value=float(np.mean(list(vb.values()))))
            if len(va) == 1:
                ids, gold, pred, L = read(a.rows[0])
                top = stats.majority_label(gold, L)
                res = stats.paired_test(gold, pred, [top] * len(gold), L, permutations=permutations)
            elif len(set(vb.values())) == 1:  # one split, one baseline value: a one-sample test against it
                res = stats.seed_test_constant(va, next(iter(vb.values())))
            else:
                res = stats.seed_test(va, vb)
        else:
            vb = b.values(metric)
            row.update(n_b=len(vb), b_value=float(np.mean(list(vb.values()))) if vb else None)
            if len(va) == 1 and len(vb) == 1:
                ids_a, gold, pred_a, L = read(a.rows[0])
                ids_b, gold_b, pred_b, _ = read(b.rows[0])
                if ids_a != ids_b or gold != gold_b:
                    raise ValueError("the two evaluations are not of the same utterances (ids or gold labels differ)")
                res = stats.paired_test(gold, pred_a, pred_b, L, permutations=permutations)
            else:
                res = stats.seed_test(va, vb)
    except (ValueError, TypeError, FileNotFoundError) as e:
        row.update(a_value=float(np.mean(list(va.values()))) if va else None, test=f"not tested: {e}",
                   verdict="cannot compare")
        return row
    row.update(a_value=float(np.mean(list(va.values()))), difference=res["difference"],
               diff_lo=res["ci"][0] if res["ci"] else None, diff_hi=res["ci"][1] if res["ci"] else None,
               test=res["test"], p_value=res["p_value"], verdict=stats.verdict(res, a.condition, name_b, alpha))
    return row
