"""PNG plots of a report (matplotlib, Agg: no display needed). Seed groups are drawn as their mean with a band (the
95% t-interval over seeds, per epoch) or with error bars; a group of one run is a plain line.

Every `plot_*` returns None when it drew, or the reason it did not (the report lists it: no figure is dropped
silently).
"""
import json
import os
import re
from typing import Any, Dict, List, Optional

import numpy as np

from . import stats
from .logs import on_shots_axis


def _pyplot():
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # the root logger may be at DEBUG (see report docs)
    try:
        import matplotlib
    except ImportError as e:  # an optional dependency: the [report] extra
        raise ImportError("the report's plots need matplotlib: pip install 'fairseq-xmodal[report]' (or --no-plots)") from e

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def _style(ax, xlabel: str, ylabel: str, title: str):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _save(fig, path: str):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def mean_band(curves: List[List[Dict[str, Any]]], key: str, scale: float = 1.0):
    """Per-epoch mean and 95% t-interval over the runs of a group -> (epochs, mean, lo, hi); lo/hi are the mean
    where fewer than 2 runs logged that epoch."""
    by_epoch: Dict[int, List[float]] = {}
    for curve in curves:
        for c in curve:
            if isinstance(c.get(key), (int, float)):
                by_epoch.setdefault(c["epoch"], []).append(scale * float(c[key]))
    epochs = sorted(by_epoch)
    mean, lo, hi = [], [], []
    for e in epochs:
        s = stats.t_summary(by_epoch[e])
        mean.append(s["mean"])
        lo.append(s["ci"][0] if s["ci"] else s["mean"])
        hi.append(s["ci"][1] if s["ci"] else s["mean"])
    return epochs, np.array(mean), np.array(lo), np.array(hi)


def _band(ax, group: Dict[str, Any], key: str, color: str, scale: float = 1.0, ls: str = "-") -> bool:
    ep, mean, lo, hi = mean_band(group["curves"], key, scale)
    if not ep:
        return False
    label = group["label"] + (f" (mean of {group['n']}, band 95% t-interval)" if group["n"] > 1 else "")
    ax.plot(ep, mean, color=color, marker=".", ls=ls, label=label)
    if group["n"] > 1:
        ax.fill_between(ep, lo, hi, color=color, alpha=0.2, lw=0)
    return True


def plot_losses(groups: List[Dict[str, Any]], path: str) -> Optional[str]:
    """Train and validation loss per epoch, one colour per seed group. groups: {label, n, curves}."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    drew = False
    for i, g in enumerate(groups):
        for ax, key in ((axes[0], "train_loss"), (axes[1], "valid_loss")):
            drew |= _band(ax, g, key, f"C{i % 10}")
    if not drew:
        plt.close(fig)
        return "no run logged an end-of-epoch loss"
    for ax, title in zip(axes, ("train loss", "valid loss")):
        _style(ax, "epoch", "loss (base 2)", title)
    _save(fig, path)
    return None


def plot_valid_f1(groups: List[Dict[str, Any]], path: str) -> Optional[str]:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drew = False
    for i, g in enumerate(groups):
        drew |= _band(ax, g, "valid_macro_f1", f"C{i % 10}", scale=100.0)
    if not drew:
        plt.close(fig)
        return "no run logged a validation macro_f1"
    _style(ax, "epoch", "valid macro-F1 (%)", "validation macro-F1")
    _save(fig, path)
    return None


def plot_confusion(counts: List[List[int]], labels: List[str], title: str, path: str) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.0 * len(labels) + 2))
    ax.imshow(counts, cmap="Blues")
    top = max(max(r) for r in counts) or 1
    for g, row in enumerate(counts):
        for p, n in enumerate(row):
            ax.text(p, g, str(n), ha="center", va="center", color="white" if n > top / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=8)
    _save(fig, path)


def plot_f1_vs_shots(learning: List[Dict[str, Any]], evals: List[Dict[str, Any]], path: str) -> Optional[str]:
    """Macro-F1 versus k shots per class (`full` = whole training split) for the seed groups of evaluations
    (mean, error bars = their interval) and of training runs (best validation macro-F1 from the logs)."""
    pts: Dict[tuple, List[tuple]] = {}  # (label, kind) -> [(k, mean, lo, hi)]
    for g in learning:
        if g.get("best_valid_macro_f1") is not None and on_shots_axis(g["train_subset"]):
            pts.setdefault((f"{g['task']} from {g['init']} (best {g['valid_subset']}, log)", "log"), []).append(
                (g["shots"], g["best_valid_macro_f1"], g.get("best_valid_macro_f1_lo"),
                 g.get("best_valid_macro_f1_hi")))
    for r in evals:
        if r.get("f1") is not None and on_shots_axis(r["data_variant"]):
            pts.setdefault((f"{r['model_task']} from {r['init']} on {r['task']} {r['split']}", "eval"), []).append(
                (r["shots"], r["f1"], r.get("f1_lo"), r.get("f1_hi")))
    if not pts:
        return ("no training run or evaluation is on a k-shot split (train.kN) or a whole training split: "
                "F1 versus shots needs a data variant such as train.k8 or train")
    ks = sorted({p[0] for series in pts.values() for p in series if p[0] is not None})
    xpos = {k: i for i, k in enumerate(ks)}
    if any(p[0] is None for series in pts.values() for p in series):
        xpos[None] = len(ks)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, ((label, kind), series) in enumerate(sorted(pts.items(), key=lambda kv: (kv[0][0], kv[0][1]))):
        series = sorted(series, key=lambda p: xpos[p[0]])
        x = np.array([xpos[p[0]] for p in series], dtype=float) + (0.03 * i)  # a nudge keeps error bars apart
        y = np.array([p[1] for p in series], dtype=float)
        lo = np.array([p[2] if p[2] is not None else p[1] for p in series], dtype=float)
        hi = np.array([p[3] if p[3] is not None else p[1] for p in series], dtype=float)
        ax.errorbar(x, y, yerr=[y - lo, hi - y], capsize=3, marker="o" if kind == "log" else "x",
                    ls="-" if kind == "log" else "--", color=f"C{i % 10}", label=label)
    ax.set_xticks(list(xpos.values()), [str(k) if k is not None else "full" for k in xpos])
    _style(ax, "training examples per class (k)", "macro-F1 (%)",
           "F1 versus shots (error bars: 95% t-interval over seeds; one seed: bootstrap over utterances)")
    _save(fig, path)
    return None


def draw_report(out_dir, files, lgroups, groups, plot: bool):
    """All figures of a report -> (figures not drawn with the reason, {group: confusion png}); the drawn ones are
    added to `files`."""
    skipped: Dict[str, str] = {}
    confusion: Dict[str, str] = {}
    if not plot:
        return {"all figures": "--no-plots"}, confusion
    for key, fn, why_none in (("loss.png", plot_losses, "no training log"),
                              ("valid_f1.png", plot_valid_f1, "no training log")):
        why = fn(lgroups, os.path.join(out_dir, key)) if lgroups else why_none
        files[key.replace(".", "_")] = key
        if why:
            skipped[key] = why
            del files[key.replace(".", "_")]
    why = plot_f1_vs_shots(lgroups, [row for _, row in groups], os.path.join(out_dir, "f1_vs_shots.png"))
    if why:
        skipped["f1_vs_shots.png"] = why
    else:
        files["f1_vs_shots_png"] = "f1_vs_shots.png"
    for g, row in groups:
        mats = [json.load(open(r["source"])).get("confusion_matrix") for r in g.rows]
        if not all(mats):
            skipped[f"confusion {g.condition}"] = "no gold labels on this split"
            continue
        counts = [[sum(m["counts"][i][j] for m in mats) for j in range(len(mats[0]["labels"]))]
                  for i in range(len(mats[0]["labels"]))]
        unique = sum(h.condition == g.condition for h, _ in groups) == 1
        fname = "confusion_" + safe_name(g.condition if unique else f"{g.condition}_{row['task']}_{row['split']}")
        fname += ".png"
        summed = f", summed over {g.n} seeds" if g.n > 1 else ""
        plot_confusion(counts, mats[0]["labels"], f"{g.condition}: {row['model_task']} ckpt on {row['task']} "
                             f"{row['split']}{summed}", os.path.join(out_dir, fname))
        confusion[g.condition if unique else f"{g.condition} ({row['task']} {row['split']})"] = fname
    return skipped, confusion
