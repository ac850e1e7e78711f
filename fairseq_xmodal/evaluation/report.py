"""Reports over many runs: fairseq training logs + xmodal-evaluate metrics.json -> tables (markdown, CSV, JSON) and
PNG plots (loss curves, validation macro-F1 curves, confusion matrices, F1 versus shots).

Runs and evaluations that differ only in their seed are grouped (seeds.py): the tables show n, mean, std and the
95% interval of each group (t over seeds; the bootstrap interval of metrics.json for a single seed), the plots draw
bands and error bars, and the comparisons table tests named pairs of conditions and every evaluation against the
majority-class baseline of its split. Log parsing: logs.py; plots: plots.py; statistics: stats.py.
"""
import csv
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from . import plots, seeds, stats
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
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def markdown_table(rows: List[Dict[str, Any]], columns: List[str], scale: Dict[str, float] = None) -> str:
    scale = scale or {}
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            if c in scale and isinstance(v, (int, float)):
                v = float(v) * scale[c]
            cells.append(_fmt(v).replace("|", "\\|").replace("\n", " "))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: str, rows: List[Dict[str, Any]], columns: List[str]):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})




# ----------------------------------------------------------------------------------------------------------------
# Seed groups


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
    skipped, confusion = draw(out_dir, files, lgroups, groups, plot)

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


def draw(out_dir, files, lgroups, groups, plot: bool):
    """All figures -> (figures not drawn with the reason, {group: confusion png})."""
    skipped: Dict[str, str] = {}
    confusion: Dict[str, str] = {}
    if not plot:
        return {"all figures": "--no-plots"}, confusion
    for key, fn, why_none in (("loss.png", plots.plot_losses, "no training log"),
                              ("valid_f1.png", plots.plot_valid_f1, "no training log")):
        why = fn(lgroups, os.path.join(out_dir, key)) if lgroups else why_none
        files[key.replace(".", "_")] = key
        if why:
            skipped[key] = why
            del files[key.replace(".", "_")]
    why = plots.plot_f1_vs_shots(lgroups, [row for _, row in groups], os.path.join(out_dir, "f1_vs_shots.png"))
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
        fname = "confusion_" + plots.safe_name(g.condition if unique else f"{g.condition}_{row['task']}_{row['split']}")
        fname += ".png"
        summed = f", summed over {g.n} seeds" if g.n > 1 else ""
        plots.plot_confusion(counts, mats[0]["labels"], f"{g.condition}: {row['model_task']} ckpt on {row['task']} "
                             f"{row['split']}{summed}", os.path.join(out_dir, fname))
        confusion[g.condition if unique else f"{g.condition} ({row['task']} {row['split']})"] = fname
    return skipped, confusion
