"""Uncertainty for every number the package reports: bootstrap intervals of one evaluation, majority-class and
stratified-random baselines, paired tests between two prediction sets on one split, t-intervals and t-tests over
seeds, and a power table. Distributions come from scipy.stats; resampling is vectorised numpy with seeded
generators (the seed and the number of resamples are returned with every result, so they can be recorded).

Scores are percent (as in metrics.json). Shapes: N utterances, R resamples, L real labels.
"""
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from scipy import stats as st

HEADLINE = ("accuracy", "macro_precision", "macro_recall", "macro_f1")
DEFAULT_LEVEL, DEFAULT_RESAMPLES, DEFAULT_SEED = 0.95, 1000, 0
DEFAULT_PERMUTATIONS = 10000


# ----------------------------------------------------------------------------------------------------------------
# Scores of many confusion matrices at once


def confusions(gold: np.ndarray, pred: np.ndarray, num_labels: int) -> np.ndarray:
    """gold, pred [R,N] (or [N]) int -> confusion counts [R,L,L] (cm[r, gold, pred])."""
    gold, pred = np.atleast_2d(gold), np.atleast_2d(pred)
    L = num_labels
    codes = gold * L + pred + (np.arange(gold.shape[0])[:, None] * L * L)  # one bincount for all R matrices
    return np.bincount(codes.ravel(), minlength=gold.shape[0] * L * L).reshape(-1, L, L)


def batch_scores(cm: np.ndarray) -> Dict[str, np.ndarray]:
    """cm [R,L,L] -> {metric: [R]} and f1 [R,L], percent; SLUE rules (fixed labels, zero_division=0)."""
    cm = cm.astype(np.float64)
    tp = np.diagonal(cm, axis1=1, axis2=2)  # [R,L]
    pred_n, gold_n = cm.sum(axis=1), cm.sum(axis=2)
    precision = np.divide(tp, pred_n, out=np.zeros_like(tp), where=pred_n > 0)
    recall = np.divide(tp, gold_n, out=np.zeros_like(tp), where=gold_n > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=precision + recall > 0)
    total = cm.sum(axis=(1, 2))
    return {"accuracy": 100 * np.divide(tp.sum(1), total, out=np.zeros_like(total), where=total > 0),
            "macro_precision": 100 * precision.mean(1), "macro_recall": 100 * recall.mean(1),
            "macro_f1": 100 * f1.mean(1), "f1": 100 * f1}


def macro_f1(gold: np.ndarray, pred: np.ndarray, num_labels: int) -> np.ndarray:
    """[R,N] -> [R] macro-F1 (percent)."""
    return batch_scores(confusions(gold, pred, num_labels))["macro_f1"]


def _interval(values: np.ndarray, level: float) -> List[float]:
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return [float(lo), float(hi)]


# ----------------------------------------------------------------------------------------------------------------
# One evaluation: bootstrap intervals and baselines


def bootstrap_intervals(gold: Sequence[int], pred: Sequence[int], labels: Sequence[str],
                        level: float = DEFAULT_LEVEL, resamples: int = DEFAULT_RESAMPLES,
                        seed: int = DEFAULT_SEED) -> Dict[str, Any]:
    """Percentile bootstrap over utterances (resampled with replacement, N per draw) -> {"ci": {metric: [lo, hi]},
    "bootstrap": {...}}; metrics: accuracy, macro P/R/F1 and f1_<label>."""
    gold, pred = np.asarray(gold, dtype=np.int64), np.asarray(pred, dtype=np.int64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(len(gold), size=(resamples, len(gold)))  # [R,N]
    s = batch_scores(confusions(gold[idx], pred[idx], len(labels)))
    ci = {m: _interval(s[m], level) for m in HEADLINE}
    ci.update({f"f1_{lab}": _interval(s["f1"][:, i], level) for i, lab in enumerate(labels)})
    return {"ci": ci, "ci_level": level,
            "bootstrap": {"resamples": resamples, "seed": seed, "unit": "utterance", "method": "percentile",
                          "std": {m: float(s[m].std(ddof=1)) for m in HEADLINE}}}


def majority_label(gold: Sequence[int], num_labels: int) -> int:
    return int(np.bincount(np.asarray(gold, dtype=np.int64), minlength=num_labels).argmax())


def baselines(gold: Sequence[int], labels: Sequence[str], level: float = DEFAULT_LEVEL,
              resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Dict[str, Any]:
    """Two chance levels on the evaluated split, with intervals:
    majority: always the split's most frequent gold label (an upper bound for any constant predictor there);
    stratified_random: labels drawn at random with the split's gold frequencies. Its value is the mean over
    `resamples` draws, each on a bootstrap resample of the utterances, so the interval holds both sources of chance."""
    gold = np.asarray(gold, dtype=np.int64)
    n, L = len(gold), len(labels)
    top = majority_label(gold, L)
    maj = {"label": labels[top], **_point(gold, np.full(n, top), L),
           **bootstrap_intervals(gold, np.full(n, top), labels, level, resamples, seed)}
    rng = np.random.default_rng(seed + 1)
    idx = rng.integers(n, size=(resamples, n))
    freq = np.bincount(gold, minlength=L) / n
    rand = rng.choice(L, size=(resamples, n), p=freq)
    s = batch_scores(confusions(gold[idx], rand, L))
    strat = {m: float(s[m].mean()) for m in HEADLINE}
    strat["ci"] = {m: _interval(s[m], level) for m in HEADLINE}
    strat.update(ci_level=level, bootstrap={"resamples": resamples, "seed": seed + 1, "unit": "utterance",
                                            "method": "percentile over random predictions on resampled utterances"},
                 frequencies={lab: float(f) for lab, f in zip(labels, freq)})
    return {"majority": maj, "stratified_random": strat}


def _point(gold: np.ndarray, pred: np.ndarray, L: int) -> Dict[str, float]:
    s = batch_scores(confusions(gold, pred, L))
    return {m: float(s[m][0]) for m in HEADLINE}


# ----------------------------------------------------------------------------------------------------------------
# Two prediction sets on the same utterances (one seed each)


def paired_test(gold: Sequence[int], pred_a: Sequence[int], pred_b: Sequence[int], num_labels: int,
                level: float = DEFAULT_LEVEL, permutations: int = DEFAULT_PERMUTATIONS,
                resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Dict[str, Any]:
    """Macro-F1(A) - macro-F1(B) on the same utterances. p-value: approximate randomisation (each utterance's two
    predictions swapped with probability 1/2, `permutations` times, two-sided, (count + 1) / (permutations + 1)).
    Interval: paired percentile bootstrap over utterances."""
    gold, a, b = (np.asarray(x, dtype=np.int64) for x in (gold, pred_a, pred_b))
    if not (len(gold) == len(a) == len(b)):
        raise ValueError(f"paired test needs one prediction per utterance from both: {len(a)} vs {len(b)} for "
                         f"{len(gold)} utterances")
    n = len(gold)
    diff = float(macro_f1(gold, a, num_labels)[0] - macro_f1(gold, b, num_labels)[0])
    rng = np.random.default_rng(seed)
    null = np.empty(permutations)
    for lo in range(0, permutations, 2000):  # chunks keep [R,N] arrays small for long test sets
        r = min(2000, permutations - lo)
        swap = rng.random((r, n)) < 0.5
        pa, pb = np.where(swap, b, a), np.where(swap, a, b)
        g = np.broadcast_to(gold, (r, n))
        null[lo:lo + r] = macro_f1(g, pa, num_labels) - macro_f1(g, pb, num_labels)
    p = (np.count_nonzero(np.abs(null) >= abs(diff) - 1e-12) + 1) / (permutations + 1)
    idx = rng.integers(n, size=(resamples, n))
    boot = macro_f1(gold[idx], a[idx], num_labels) - macro_f1(gold[idx], b[idx], num_labels)
    return {"difference": diff, "ci": _interval(boot, level), "ci_level": level, "p_value": float(p),
            "test": f"approximate randomisation, paired by utterance ({permutations} permutations)",
            "n_a": 1, "n_b": 1, "utterances": n, "seed": seed}


# ----------------------------------------------------------------------------------------------------------------
# Over seeds


def t_summary(values: Sequence[float], level: float = DEFAULT_LEVEL) -> Dict[str, Any]:
    """n, mean, sample std and the t-interval of the mean (no interval for n < 2)."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    n = len(v)
    out = {"n": n, "mean": float(v.mean()) if n else None, "std": float(v.std(ddof=1)) if n > 1 else None,
           "ci": None, "ci_level": level, "interval": "t" if n > 1 else None}
    if n > 1:
        half = float(st.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / np.sqrt(n))
        out["ci"] = [out["mean"] - half, out["mean"] + half]
    return out


def seed_test(a: Dict[Any, float], b: Dict[Any, float], level: float = DEFAULT_LEVEL) -> Dict[str, Any]:
    """Seed-level macro-F1 values {seed: value} of two conditions. The same seeds on both sides (>= 2): paired
    t-test on the per-seed differences; otherwise Welch's t-test (needs >= 2 values per side)."""
    common = sorted(set(a) & set(b), key=str)
    if len(common) >= 2 and set(a) == set(b):
        d = np.array([a[s] - b[s] for s in common])
        summ = t_summary(d, level)
        if np.allclose(d, d[0]):  # zero variance: the t statistic is undefined
            p = 1.0 if abs(d[0]) < 1e-12 else 0.0
        else:
            p = float(st.ttest_rel([a[s] for s in common], [b[s] for s in common]).pvalue)
        return {"difference": summ["mean"], "ci": summ["ci"], "ci_level": level, "p_value": p,
                "test": f"paired t-test over {len(common)} seeds", "n_a": len(a), "n_b": len(b)}
    va, vb = np.array(list(a.values()), float), np.array(list(b.values()), float)
    if len(va) < 2 or len(vb) < 2:
        raise ValueError(f"a t-test over seeds needs >= 2 seeds per side (got {len(va)} and {len(vb)})")
    res = st.ttest_ind(va, vb, equal_var=False)
    diff = float(va.mean() - vb.mean())
    se2a, se2b = va.var(ddof=1) / len(va), vb.var(ddof=1) / len(vb)
    se = np.sqrt(se2a + se2b)
    if se == 0:
        return {"difference": diff, "ci": [diff, diff], "ci_level": level, "p_value": 1.0 if diff == 0 else 0.0,
                "test": "Welch t-test over seeds (zero variance)", "n_a": len(va), "n_b": len(vb)}
    df = (se2a + se2b) ** 2 / (se2a ** 2 / (len(va) - 1) + se2b ** 2 / (len(vb) - 1))
    half = float(st.t.ppf(0.5 + level / 2, df) * se)
    return {"difference": diff, "ci": [diff - half, diff + half], "ci_level": level, "p_value": float(res.pvalue),
            "test": f"Welch t-test over seeds ({len(va)} vs {len(vb)})", "n_a": len(va), "n_b": len(vb)}


def seed_test_constant(a: Dict[Any, float], value: float, level: float = DEFAULT_LEVEL) -> Dict[str, Any]:
    """Seed values of one condition against a fixed number (the majority baseline of their split): one-sample t-test
    (scipy.stats.ttest_1samp), the same p-value as a paired test against that number repeated per seed."""
    v = np.array(list(a.values()), float)
    if len(v) < 2:
        raise ValueError("a t-test over seeds needs >= 2 seeds")
    summ = t_summary(v - value, level)
    p = float(st.ttest_1samp(v, value).pvalue) if v.std() > 0 else (1.0 if abs(v[0] - value) < 1e-12 else 0.0)
    return {"difference": summ["mean"], "ci": summ["ci"], "ci_level": level, "p_value": p,
            "test": f"one-sample t-test over {len(v)} seeds", "n_a": len(v), "n_b": 1}


def verdict(result: Dict[str, Any], name_a: str, name_b: str, alpha: float = 0.05) -> str:
    if result["p_value"] >= alpha:
        return f"no detectable difference at alpha={alpha:g}"
    return f"{name_a if result['difference'] > 0 else name_b} better (p={result['p_value']:.3g} < {alpha:g})"


# ----------------------------------------------------------------------------------------------------------------
# How many seeds / utterances


def t_test_power(effect: float, sigma: float, n: int, alpha: float = 0.05, paired: bool = False) -> float:
    """Power of a two-sided t-test to detect a true difference `effect` with per-seed std `sigma`: two groups of n
    seeds (Welch with equal variances reduces to df = 2n-2), or n paired seeds whose differences have std sigma."""
    if n < 2:
        return 0.0
    df, nc = (n - 1, effect / (sigma / np.sqrt(n))) if paired else (2 * n - 2, effect / (sigma * np.sqrt(2 / n)))
    crit = st.t.ppf(1 - alpha / 2, df)
    return float(st.nct.sf(crit, df, nc) + st.nct.cdf(-crit, df, nc))


def seeds_needed(effect: float, sigma: float, power: float = 0.8, alpha: float = 0.05, paired: bool = False,
                 max_n: int = 1000) -> Optional[int]:
    for n in range(2, max_n + 1):
        if t_test_power(effect, sigma, n, alpha, paired) >= power:
            return n
    return None


def power_table(effects: Sequence[float] = (1, 2, 3, 5, 10), sigmas: Sequence[float] = (0.5, 1, 2, 4),
                power: float = 0.8, alpha: float = 0.05) -> List[Dict[str, Any]]:
    """Seeds per condition (two independent groups, Welch) for each effect size (macro-F1 points) and seed std."""
    return [{"effect_f1_points": e, **{f"sigma={s:g}": seeds_needed(e, s, power, alpha) for s in sigmas}}
            for e in effects]


def utterance_se(n: int, labels: int = 3, neutral: float = 0.75, accuracy: float = 0.7, draws: int = 400,
                 seed: int = 0) -> float:
    """Simulated standard error of macro-F1 (points) on n utterances with a Neutral-heavy gold distribution
    (`neutral` share, the rest split equally) for a classifier right with probability `accuracy`."""
    rng = np.random.default_rng(seed)
    p = np.full(labels, (1 - neutral) / (labels - 1))
    p[0] = neutral
    gold = rng.choice(labels, size=(draws, n), p=p)
    wrong = (gold + rng.integers(1, labels, size=(draws, n))) % labels
    pred = np.where(rng.random((draws, n)) < accuracy, gold, wrong)
    return float(macro_f1(gold, pred, labels).std(ddof=1))


def utterance_table(sizes: Sequence[int] = (100, 300, 1000, 3000), power: float = 0.8,
                    alpha: float = 0.05) -> List[Dict[str, Any]]:
    """Sampling noise of macro-F1 from the evaluation split alone (one seed), and the smallest difference two
    independent models evaluated on it separate with the given power (normal approximation)."""
    z = st.norm.ppf(1 - alpha / 2) + st.norm.ppf(power)
    rows = []
    for n in sizes:
        se = utterance_se(n)
        rows.append({"dev_utterances": n, "se_macro_f1": se, "detectable_difference": float(z * se * np.sqrt(2))})
    return rows
