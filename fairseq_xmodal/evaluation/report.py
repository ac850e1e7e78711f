"""Reports over many runs: fairseq training logs + xmodal-evaluate metrics.json -> tables (markdown, CSV, JSON) and
PNG plots (loss curves, validation macro-F1 curves, confusion matrices, F1 versus shots).

Runs and evaluations that differ only in their seed are grouped (seeds.py): the tables show n, mean, std and the
95% interval of each group (t over seeds; the bootstrap interval of metrics.json for a single seed), the plots draw
bands and error bars, and the comparisons table tests named pairs of conditions and every evaluation against the
majority-class baseline of its split. Here: collecting the inputs and writing the report. Runs and their logs: logs.py
(read by fairseq_log.py); seed groups and comparisons: conditions.py; tables: tables.py; plots: plots.py; statistics:
stats.py and seeds.py.
"""
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from . import plots, seeds, stats, tables
from .conditions import (GROUP_COLUMNS, LEARNING_GROUP_COLUMNS, comparisons, eval_groups,
                         learning_groups)
from .logs import LOG_NAMES, RunLog, learning_speed, parse_training_log, shots_of

# ----------------------------------------------------------------------------------------------------------------
# Collecting inputs


@dataclass
class Collected:
    runs: List[RunLog]
    evals: List[Tuple[str, Dict[str, Any]]]  # (metrics.json path, content)


def collect(paths: Iterable[str], log_names: Iterable[str] = LOG_NAMES) -> Collected:
    """Training logs and metrics.json files named directly or found under the given folders."""
    logs, metrics = [], []
    for p in paths:
        if os.path.isfile(p):
            (metrics if p.endswith(".json") else logs).append(os.path.abspath(p))
        elif os.path.isdir(p):
            for d, _, files in sorted(os.walk(p)):
                logs += [os.path.join(d, f) for f in sorted(files) if f in log_names]
                metrics += [os.path.join(d, f) for f in sorted(files) if f == "metrics.json"]
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    logs, metrics = list(dict.fromkeys(logs)), list(dict.fromkeys(metrics))
    runs = [parse_training_log(p, n) for p, n in zip(logs, unique_names(logs))]
    evals = []
    for p in metrics:
        with open(p) as f:
            m = json.load(f)
        if not str(m.get("format", "")).startswith("fairseq_xmodal.metrics/"):
            raise ValueError(f"{p} is not an xmodal-evaluate metrics.json (no format field)")
        evals.append((p, m))
    return Collected(runs, evals)


def unique_names(paths: List[str]) -> List[str]:
    """Per path, the shortest trailing folder name no other path shares: `a/k4`, `b/k4`, `c/full` -> `a/k4`, `b/k4`,
    `full`."""
    dirs = [os.path.dirname(os.path.abspath(p)).split(os.sep) for p in paths]
    names = []
    for d in dirs:
        for depth in range(1, len(d) + 1):
            name = "/".join(d[-depth:])
            if sum("/".join(e[-depth:]) == name for e in dirs) == 1:
                break
        names.append(name)
    return names


# ----------------------------------------------------------------------------------------------------------------
# Tables


RESULT_COLUMNS = ["name", "seed", "init", "data_variant", "model_task", "task", "cross_modal", "split", "rows",
                  "accuracy", "precision", "recall", "f1", "f1_lo", "f1_hi", "majority_f1", "metrics", "note",
                  "source"]
LEARNING_COLUMNS = ["run", "task", "init", "train_subset", "shots", "epochs", "num_updates", "best_valid_macro_f1",
                    "best_epoch", "last_valid_macro_f1", "first_multi_label_update", "first_multi_label_epoch",
                    "stable_multi_label_update", "log"]


def result_row(path: str, m: Dict[str, Any], name: str) -> Dict[str, Any]:
    ck = m["checkpoint"]
    variant = {"transfer": "none (transferred)", "official": "none (imported)"}.get(ck.get("kind"),
                                                                                   ck.get("train_subset") or "?")
    return {"name": name, "init": ck.get("init", "?"), "data_variant": variant, "model_task": ck.get("task"),
            "task": m["task"], "cross_modal": "yes" if m.get("cross_modal") else "no", "split": m["split"],
            "rows": m["rows"], "accuracy": m.get("accuracy"), "precision": m.get("macro_precision"),
            "recall": m.get("macro_recall"), "f1": m.get("macro_f1"), "metrics": m.get("metrics_mode"),
            "note": "; ".join(m.get("warnings") or []), "source": path, "seed": ck.get("seed"),
            "shots": shots_of(variant), "f1_lo": (m.get("ci") or {}).get("macro_f1", [None])[0],
            "f1_hi": (m.get("ci") or {}).get("macro_f1", [None, None])[1],
            "majority_f1": ((m.get("baselines") or {}).get("majority") or {}).get("macro_f1"),
            "ci": m.get("ci") or {}}


def _fmt(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def markdown_table(rows: List[Dict[str, Any]], columns: List[str], scale: Dict[str, float] = None) -> str:
    scale = scale or {}
    scaled = [{c: float(r[c]) * scale[c] if c in scale and isinstance(r.get(c), (int, float)) else r.get(c)
               for c in columns} for r in rows]
    return tables.markdown(scaled, columns, _fmt)


def write_csv(path: str, rows: List[Dict[str, Any]], columns: List[str]):
    with open(path, "w", newline="") as f:
        f.write(tables.csv_text(rows, columns))


# ----------------------------------------------------------------------------------------------------------------
# The report


def build_report(paths: Iterable[str], out_dir: str, subset: Optional[str] = None, compare: Sequence[str] = (),
                 group_by: Optional[Sequence[str]] = None, seed_key: str = "seed", alpha: float = seeds.ALPHA,
                 plot: bool = True, permutations: int = stats.DEFAULT_PERMUTATIONS) -> Dict[str, Any]:
    """Collect runs and evaluations under `paths`; write tables and plots to `out_dir`; return report.json content."""
    pairs = seeds.parse_pairs(compare)
    col = collect(paths)
    if not col.runs and not col.evals:
        raise FileNotFoundError(f"no training log ({', '.join(LOG_NAMES)}) or metrics.json under {list(paths)}")
    os.makedirs(out_dir, exist_ok=True)
    speeds = []
    for r in col.runs:
        s = learning_speed(r, subset)
        s["seed"] = ((r.cfg or {}).get("common") or {}).get("seed")
        speeds.append(s)
    eval_names = unique_names([p for p, _ in col.evals])
    results = [result_row(p, m, n) for (p, m), n in zip(col.evals, eval_names)]
    groups = eval_groups(results, seed_key, group_by)
    group_rows = [row for _, row in groups]
    lgroups = learning_groups(speeds, seed_key)
    comps = comparisons(groups, results, pairs, alpha, permutations)
    files: Dict[str, str] = {}
    for name, rows, cols in (("results.csv", results, RESULT_COLUMNS), ("learning.csv", speeds, LEARNING_COLUMNS),
                             ("seed_groups.csv", group_rows, GROUP_COLUMNS),
                             ("learning_groups.csv", lgroups, LEARNING_GROUP_COLUMNS),
                             ("comparisons.csv", comps, seeds.COMPARISON_COLUMNS)):
        write_csv(os.path.join(out_dir, name), rows, cols)
        files[name.replace(".", "_")] = name
    skipped, confusion = plots.draw_report(out_dir, files, lgroups, groups, plot)

    md = ["# xmodal report", "",
          "## Conditions over seeds (percent; interval: 95% t over seeds, or the bootstrap interval of one seed)", "",
          markdown_table(group_rows, [c for c in GROUP_COLUMNS if not c.endswith(("_lo", "_hi")) or c[:-3] == "f1"])
          if group_rows else "(none)\n",
          f"## Comparisons (macro-F1 difference A - B, alpha = {alpha:g})", "",
          markdown_table(comps, seeds.COMPARISON_COLUMNS) if comps else "(none)\n",
          "## Evaluations (percent; metrics = slue or legacy)", "",
          markdown_table(results, RESULT_COLUMNS[:-1]) if results else "(none)\n",
          "## Training runs (validation from the training logs; F1 in percent)", "",
          markdown_table(lgroups, LEARNING_GROUP_COLUMNS) if lgroups else "(none)\n",
          markdown_table(speeds, LEARNING_COLUMNS[:-1],
                         scale={"best_valid_macro_f1": 100, "last_valid_macro_f1": 100}) if speeds else ""]
    for key in ("loss_png", "valid_f1_png", "f1_vs_shots_png"):
        if key in files:
            md += [f"![{key[:-4]}]({files[key]})", ""]
    for name, fname in confusion.items():
        md += [f"![confusion {name}]({fname})", ""]
    if skipped:
        md += ["## Figures not drawn", ""] + [f"- {k}: {why}" for k, why in skipped.items()] + [""]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(md))
    report = {"format": "fairseq_xmodal.report/2", "results": results, "learning": speeds,
              "seed_groups": group_rows, "learning_groups": [{k: v for k, v in g.items() if k != "curves"}
                                                             for g in lgroups],
              "comparisons": comps, "figures_not_drawn": skipped,
              "files": {**files, "report_md": "report.md", "confusion_png": confusion}}
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    return report
