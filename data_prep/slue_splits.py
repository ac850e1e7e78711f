"""The splits `xmodal-prepare-slue` derives from the training split, all seeded: a stratified `valid` carved out of
fine-tune, class-balanced copies, and nested few-shot subsets. Pure: a table in, a table out; rows keep their input
order.

Why not sklearn's `train_test_split(stratify=...)`: it draws one permutation over all rows and rounds the per-class
counts jointly (StratifiedShuffleSplit), so it picks other rows than the rule below, and a class's choice would depend
on the other classes. Here each (seed, step, label) has its own permutation (RNG_ALGORITHM), which is recorded in
prep_report.json, keeps few-shot subsets nested across k, and makes a step's choice independent of which other steps
ran. Switching would change which utterances every existing data folder (and the demo) trains on.
"""
import zlib
from collections import Counter
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from .slue_rows import LABEL_COL, DataPrepError, label_counts

BALANCE_METHODS = ("prune", "dup_floor", "dup_equal")

RNG_ALGORITHM = ("numpy.random.default_rng([seed, zlib.crc32(step), zlib.crc32(label)]).permutation(n) over the "
                 "label's rows in input order; step is 'valid', 'prune', 'dup_equal' or 'few_shot'")


def _perm(seed: int, step: str, label: str, n: int) -> np.ndarray:
    """One permutation per (seed, step, label): a step's choice does not depend on which other steps ran."""
    return np.random.default_rng([seed, zlib.crc32(step.encode()), zlib.crc32(label.encode())]).permutation(n)


def _label_positions(df: pd.DataFrame) -> Dict[str, np.ndarray]:
    labels = df[LABEL_COL].to_numpy()
    return {lab: np.flatnonzero(labels == lab) for lab in sorted(set(labels))}


def carve_valid(df: pd.DataFrame, fraction: float, seed: int) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(train, valid): per label, floor(fraction*n + 0.5) rows (at least 1 if n >= 2) go to valid."""
    if not 0.0 < fraction < 1.0:
        raise DataPrepError(f"--valid-from-fine-tune {fraction}: the fraction must be in (0, 1)", fix="e.g. 0.1")
    in_valid = np.zeros(len(df), dtype=bool)
    for label, pos in _label_positions(df).items():
        n = len(pos)
        k = int(np.floor(fraction * n + 0.5))
        if n >= 2:
            k = min(max(k, 1), n - 1)  # stratified means every class is seen on both sides
        in_valid[pos[_perm(seed, "valid", label, n)[:k]]] = True
    return df[~in_valid].reset_index(drop=True), df[in_valid].reset_index(drop=True)


BALANCE_ALGORITHMS = {
    "prune": "every class undersampled to the minority count m: the first m rows of the label's permutation",
    "dup_floor": "prior system's rule: each row of a class with n rows written floor(max/n) times (majority once)",
    "dup_equal": "each class replicated to exactly max rows: floor(max/n) copies of every row plus one more copy of "
                 "the first (max mod n) rows of the label's permutation",
}


def balance(df: pd.DataFrame, method: str, seed: int) -> pd.DataFrame:
    """A class-balanced copy of df (BALANCE_ALGORITHMS); copies of a row are written next to each other."""
    groups = _label_positions(df)
    if not groups:
        return df.copy()
    counts = {lab: len(pos) for lab, pos in groups.items()}
    reps = np.zeros(len(df), dtype=np.int64)
    if method == "prune":
        m = min(counts.values())
        for label, pos in groups.items():
            reps[pos[_perm(seed, "prune", label, len(pos))[:m]]] = 1
    elif method == "dup_floor":
        m = max(counts.values())
        for label, pos in groups.items():
            reps[pos] = m // len(pos)
    elif method == "dup_equal":
        m = max(counts.values())
        for label, pos in groups.items():
            reps[pos] = m // len(pos)
            reps[pos[_perm(seed, "dup_equal", label, len(pos))[: m % len(pos)]]] += 1
    else:
        raise DataPrepError(f"unknown balancing method {method!r}", fix=f"use one of {', '.join(BALANCE_METHODS)}")
    return df.iloc[np.repeat(np.arange(len(df)), reps)].reset_index(drop=True)


def few_shot(df: pd.DataFrame, ks: Iterable[int], seed: int) -> Dict[int, pd.DataFrame]:
    """{k: k rows per class}. One seeded permutation per class, k-prefixes of it, so smaller sets nest in larger."""
    groups = _label_positions(df)
    perms = {label: pos[_perm(seed, "few_shot", label, len(pos))] for label, pos in groups.items()}
    out = {}
    for k in sorted(set(ks)):
        short = {lab: len(p) for lab, p in perms.items() if len(p) < k}
        if k < 1 or short:
            raise DataPrepError(f"few-shot k={k} needs k >= 1 and k rows of every class; too few: {short}",
                                fix="choose smaller --few-shot values")
        out[k] = df.iloc[np.sort(np.concatenate([p[:k] for p in perms.values()]))].reset_index(drop=True)
    return out


def derive_splits(tables: Dict[str, pd.DataFrame], valid_fraction: Optional[float], seed: int,
                  balance_methods: Sequence[str], few_shot_ks: Sequence[int], classes: Sequence[str],
                  warnings: List[str], step: Callable[[str, str, pd.DataFrame], None]
                  ) -> Tuple[Dict[str, Tuple[pd.DataFrame, str, dict]], str]:
    """The splits to write, name -> (table, audio source split, how it was made), and the training split's name."""
    splits: Dict[str, Tuple[pd.DataFrame, str, dict]] = {}
    if valid_fraction is not None:
        train, valid = carve_valid(tables["fine-tune"], valid_fraction, seed)
        t_name = "train"
        splits["train"] = (train, "fine-tune", {"from": "fine-tune", "algorithm": "carve_valid: the rest"})
        splits["valid"] = (valid, "fine-tune", {
            "from": "fine-tune", "algorithm": f"carve_valid: per label floor({valid_fraction}*n+0.5) rows "
            "(at least 1 and at most n-1 when n >= 2), the first of the label's permutation",
            "ids": list(valid["id"])})
        step("train", "carved", train)
        step("valid", "carved", valid)
    else:
        t_name = "fine-tune"
        splits["fine-tune"] = (tables["fine-tune"], "fine-tune", {})
    splits["dev"] = (tables["dev"], "dev", {})
    if "test" in tables:
        splits["test"] = (tables["test"], "test", {})
    t_table = splits[t_name][0]
    if t_table.empty:
        raise DataPrepError(f"the training split {t_name} has no rows left",
                            fix="check the label options and rejected.tsv")
    missing = [c for c in classes if c not in set(t_table[LABEL_COL])]
    if missing:
        warnings.append(f"{t_name} has no rows of class(es) {missing}")
    t_counts = label_counts(t_table)
    for method in dict.fromkeys(balance_methods):
        bal = balance(t_table, method, seed)
        info = {"from": t_name, "algorithm": BALANCE_ALGORITHMS[method]}
        if method == "prune":
            info["ids"] = list(bal["id"])
        else:
            base = {lab: max(t_counts.values()) // n for lab, n in t_counts.items()}
            info["copies_per_label"] = base
            if method == "dup_equal":
                label_of = dict(zip(t_table["id"], t_table[LABEL_COL]))
                info["extra_copy_ids"] = sorted(u for u, c in Counter(bal["id"]).items() if c > base[label_of[u]])
        splits[f"{t_name}.{method}"] = (bal, "fine-tune", info)
        step(f"{t_name}.{method}", "balanced", bal)
    for k, sub in few_shot(t_table, few_shot_ks, seed).items():
        splits[f"{t_name}.k{k}"] = (sub, "fine-tune", {
            "from": t_name, "algorithm": f"few_shot: first {k} rows of each label's permutation (nested)",
            "ids": list(sub["id"])})
        step(f"{t_name}.k{k}", "few-shot", sub)
    return splits, t_name
