"""Reports over many runs: fairseq training logs + xmodal-evaluate metrics.json -> tables (markdown, CSV, JSON) and
PNG plots (loss curves, validation macro-F1 curves, confusion matrices, F1 versus shots).

Log parsing reads fairseq's end-of-epoch lines in every format fairseq writes them:
  hydra, simple:  [time][valid][INFO] - epoch 003 | valid on 'valid' subset | loss 1.584 | accuracy 0.3333 | ...
                  [time][train][INFO] - epoch 003 | loss 1.584 | ...
  hydra, json:    [time][valid][INFO] - {"epoch": 3, "valid_loss": "1.584", ...}
  fairseq-train:  2024-01-01 10:00:00 | INFO | valid | epoch 003 | valid on 'valid' subset | loss 1.584 | ...
and the config dict fairseq_cli.train logs at start (task, train_subset, finetune_from_model). Per-update
`train_inner` lines are ignored. A later line for the same (subset, epoch) replaces an earlier one (resumed runs).
"""
import ast
import csv
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from .evaluate import describe_init_file

LOG_NAMES = ("hydra_train.log", "train.log")
HYDRA_LINE = re.compile(r"^\[[^\]]*\]\[(?P<tag>[^\]]+)\]\[(?P<level>[A-Z]+)\] - (?P<msg>.*)$")
PLAIN_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \| (?P<level>[A-Z]+) \| (?P<tag>[^|]+?) \| (?P<msg>.*)$")
VALID_ON = re.compile(r"^valid on '(?P<subset>[^']+)' subset$")
EPOCH = re.compile(r"^epoch (?P<epoch>\d+)$")
SHOTS = re.compile(r"(?:^|\.)k(\d+)(?:\.|$)")


# ----------------------------------------------------------------------------------------------------------------
# Log parsing


@dataclass
class LogRecord:
    kind: str  # "train" | "valid" | "config"
    subset: Optional[str]
    epoch: Optional[int]
    stats: Dict[str, Any]


def _value(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    s = text.strip()
    try:
        return int(s) if re.fullmatch(r"[-+]?\d+", s) else float(s)
    except ValueError:
        return s


def parse_log_line(line: str) -> Optional[LogRecord]:
    """One log line -> an end-of-epoch train/valid record, the run config, or None."""
    line = line.rstrip("\n")
    m = HYDRA_LINE.match(line) or PLAIN_LINE.match(line)
    if not m:
        return None
    tag, msg = m.group("tag").strip(), m.group("msg")
    if tag == "train_inner":
        return None
    if msg.startswith("{'_name'"):
        cfg = _literal_dict(msg)
        return LogRecord("config", None, None, cfg) if cfg is not None else None
    if msg.startswith("{"):
        return _parse_json(tag, msg)
    return _parse_simple(tag, msg)


class _BareNamesToStrings(ast.NodeTransformer):
    """fairseq's config repr prints enum choices unquoted (`'long_utterances': error`); read them as strings."""

    def visit_Name(self, node):
        return ast.copy_location(ast.Constant(node.id), node)


def _literal_dict(text: str) -> Optional[Dict[str, Any]]:
    """A python dict repr -> dict, without running code (literal_eval of a parsed, sanitised tree)."""
    try:
        tree = _BareNamesToStrings().visit(ast.parse(text, mode="eval"))
        value = ast.literal_eval(tree.body)
    except (ValueError, SyntaxError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _parse_json(tag: str, msg: str) -> Optional[LogRecord]:
    try:
        d = json.loads(msg)
    except ValueError:
        return None
    prefix = tag + "_"
    if not isinstance(d, dict) or prefix + "loss" not in d:
        return None
    stats = {k[len(prefix):]: _value(v) for k, v in d.items() if k.startswith(prefix)}
    epoch = d.get("epoch")
    kind = "train" if tag == "train" else "valid"
    return LogRecord(kind, None if kind == "train" else tag, int(epoch) if epoch is not None else None, stats)


def _parse_simple(tag: str, msg: str) -> Optional[LogRecord]:
    parts = [p.strip() for p in msg.split(" | ")]
    m = EPOCH.match(parts[0])
    if not m or len(parts) < 2:
        return None
    v = VALID_ON.match(parts[1])
    if v:
        kind, subset, rest = "valid", v.group("subset"), parts[2:]
    elif tag == "train":
        kind, subset, rest = "train", None, parts[1:]
    else:
        return None
    stats = {}
    for p in rest:
        key, _, val = p.partition(" ")
        if key:
            stats[key] = _value(val)
    return LogRecord(kind, subset, int(m.group("epoch")), stats)


@dataclass
class RunLog:
    path: str
    name: str
    cfg: Optional[Dict[str, Any]] = None
    train: Dict[int, Dict[str, Any]] = field(default_factory=dict)  # epoch -> stats
    valid: Dict[str, Dict[int, Dict[str, Any]]] = field(default_factory=dict)  # subset -> epoch -> stats

    def _cfg(self, section: str, key: str):
        return ((self.cfg or {}).get(section) or {}).get(key)

    @property
    def task(self) -> Optional[str]:
        return self._cfg("task", "_name")

    @property
    def train_subset(self) -> Optional[str]:
        return self._cfg("dataset", "train_subset")

    @property
    def shots(self) -> Optional[int]:
        return shots_of(self.train_subset)

    @property
    def init(self) -> str:
        if self.cfg is None:
            return "?"  # the log has no config line: say so rather than guess "scratch"
        path = self._cfg("checkpoint", "finetune_from_model")
        restore = self._cfg("checkpoint", "restore_file")
        if not path and restore and os.path.basename(restore) != "checkpoint_last.pt":
            path = restore
        return describe_init_file(path) if path else "scratch"

    @property
    def valid_subsets(self) -> List[str]:
        configured = [s for s in str(self._cfg("dataset", "valid_subset") or "").split(",") if s]
        return [s for s in configured if s in self.valid] + [s for s in self.valid if s not in configured]


def shots_of(train_subset: Optional[str]) -> Optional[int]:
    m = SHOTS.search(train_subset or "")
    return int(m.group(1)) if m else None


def on_shots_axis(train_subset: Optional[str]) -> bool:
    """k-shot splits (`train.k8`) and whole training splits (`train`, `fine-tune`); not balanced variants."""
    return bool(train_subset) and (shots_of(train_subset) is not None or "." not in train_subset)


def parse_training_log(path: str, name: Optional[str] = None) -> RunLog:
    run = RunLog(path=os.path.abspath(path), name=name or os.path.basename(os.path.dirname(os.path.abspath(path))))
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            rec = parse_log_line(line)
            if rec is None:
                continue
            if rec.kind == "config":
                run.cfg = rec.stats
            elif rec.kind == "train" and rec.epoch is not None:
                run.train[rec.epoch] = rec.stats
            elif rec.kind == "valid" and rec.epoch is not None:
                run.valid.setdefault(rec.subset, {})[rec.epoch] = rec.stats
    return run


# ----------------------------------------------------------------------------------------------------------------
# Learning speed


def single_label(stats: Dict[str, Any], tol: float = 1e-4) -> Optional[bool]:
    """Were all predictions of this validation one label? From the logged per-class recall_*, None if not logged.

    One recall is 1 and the others 0 is necessary. With accuracy and macro_precision logged it is also sufficient:
    then precision is 0 for every other class, and macro_precision == accuracy / n_classes exactly when that label
    was predicted for every row (up to the log's 4-decimal rounding, `tol`)."""
    recalls = [float(v) for k, v in stats.items() if k.startswith("recall_") and isinstance(v, (int, float))]
    if not recalls:
        return None
    pattern = sorted(recalls) == [0.0] * (len(recalls) - 1) + [1.0]
    if not pattern:
        return False
    acc, prec = stats.get("accuracy"), stats.get("macro_precision")
    if isinstance(acc, (int, float)) and isinstance(prec, (int, float)):
        return abs(float(prec) - float(acc) / len(recalls)) <= tol
    return True


def learning_speed(run: RunLog, subset: Optional[str] = None) -> Dict[str, Any]:
    """Per-epoch validation curve and the update at which predictions stop being single-label."""
    subsets = run.valid_subsets
    subset = subset or (subsets[0] if subsets else None)
    curve = []
    for epoch in sorted(set(run.train) | set(run.valid.get(subset, {}))):
        v, t = run.valid.get(subset, {}).get(epoch, {}), run.train.get(epoch, {})
        curve.append({"epoch": epoch, "num_updates": v.get("num_updates", t.get("num_updates")),
                      "train_loss": t.get("loss"), "valid_loss": v.get("loss"),
                      "valid_accuracy": v.get("accuracy"), "valid_macro_f1": v.get("macro_f1"),
                      "single_label": single_label(v) if v else None})
    judged = [c for c in curve if c["single_label"] is not None]
    first = next((c for c in judged if not c["single_label"]), None)
    stable = None
    for i, c in enumerate(judged):  # first validation after which predictions never collapse again
        if all(not d["single_label"] for d in judged[i:]):
            stable = c
            break
    scored = [c for c in curve if isinstance(c["valid_macro_f1"], (int, float))]
    best = max(scored, key=lambda c: c["valid_macro_f1"]) if scored else None
    last = curve[-1] if curve else {}
    return {"run": run.name, "log": run.path, "task": run.task, "train_subset": run.train_subset,
            "shots": run.shots, "init": run.init, "valid_subset": subset,
            "epochs": len(curve), "num_updates": last.get("num_updates"),
            "first_multi_label_update": first["num_updates"] if first else None,
            "first_multi_label_epoch": first["epoch"] if first else None,
            "stable_multi_label_update": stable["num_updates"] if stable else None,
            "stable_multi_label_epoch": stable["epoch"] if stable else None,
            "best_valid_macro_f1": best["valid_macro_f1"] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "last_valid_macro_f1": scored[-1]["valid_macro_f1"] if scored else None,
            "curve": curve}


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
    """Shortest distinct trailing folder names: run dirs `a/k4`, `b/k4` -> `a/k4`, `b/k4`; else just `k4`."""
    dirs = [os.path.dirname(os.path.abspath(p)).split(os.sep) for p in paths]
    depth = 1
    while True:
        names = ["/".join(d[-depth:]) for d in dirs]
        if len(set(names)) == len(names) or depth > max((len(d) for d in dirs), default=1):
            return names
        depth += 1


# ----------------------------------------------------------------------------------------------------------------
# Tables


RESULT_COLUMNS = ["name", "init", "data_variant", "model_task", "task", "cross_modal", "split", "rows", "accuracy",
                  "precision", "recall", "f1", "metrics", "note", "source"]
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
            "note": "; ".join(m.get("warnings") or []), "source": path}


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
# Plots (matplotlib, Agg: no display needed)


def _pyplot():
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # the root logger may be at DEBUG (see report docs)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "run"


def _style(ax, xlabel: str, ylabel: str, title: str):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save(fig, path: str):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)


def plot_losses(speeds: List[Dict[str, Any]], path: str):
    """Train and validation loss per epoch, every run on one figure (solid train, dashed valid, one colour per run)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    for i, s in enumerate(speeds):
        color = f"C{i % 10}"
        ep = [c["epoch"] for c in s["curve"]]
        for ax, key in ((axes[0], "train_loss"), (axes[1], "valid_loss")):
            pts = [(e, c[key]) for e, c in zip(ep, s["curve"]) if isinstance(c[key], (int, float))]
            if pts:
                ax.plot(*zip(*pts), color=color, marker=".", label=s["run"])
    for ax, title in zip(axes, ("train loss", "valid loss")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (base 2)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    _save(fig, path)


def plot_valid_f1(speeds: List[Dict[str, Any]], path: str):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, s in enumerate(speeds):
        pts = [(c["epoch"], 100 * c["valid_macro_f1"]) for c in s["curve"]
               if isinstance(c["valid_macro_f1"], (int, float))]
        if pts:
            ax.plot(*zip(*pts), color=f"C{i % 10}", marker=".", label=s["run"])
        if s["first_multi_label_epoch"] is not None:
            ax.axvline(s["first_multi_label_epoch"], color=f"C{i % 10}", ls=":", lw=0.8)
    _style(ax, "epoch", "valid macro-F1 (%)", "validation macro-F1 (dotted: first epoch not single-label)")
    _save(fig, path)


def plot_confusion(m: Dict[str, Any], title: str, path: str):
    plt = _pyplot()
    cm, labels = m["confusion_matrix"]["counts"], m["confusion_matrix"]["labels"]
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.0 * len(labels) + 2))
    ax.imshow(cm, cmap="Blues")
    top = max(max(r) for r in cm) or 1
    for g, row in enumerate(cm):
        for p, n in enumerate(row):
            ax.text(p, g, str(n), ha="center", va="center", color="white" if n > top / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=8)
    _save(fig, path)


def plot_f1_vs_shots(speeds: List[Dict[str, Any]], evals: List[Dict[str, Any]], path: str) -> bool:
    """Best validation macro-F1 (from logs) and evaluated macro-F1 versus k shots per class; `full` = whole set."""
    pts: Dict[Tuple[str, str], List[Tuple[Optional[int], float]]] = {}  # (label, "log" | "eval") -> points
    for s in speeds:
        if s["best_valid_macro_f1"] is not None and on_shots_axis(s["train_subset"]):
            pts.setdefault((f"{s['task']} from {s['init']} (best {s['valid_subset']}, log)", "log"), []).append(
                (s["shots"], 100 * s["best_valid_macro_f1"]))
    for r in evals:
        if r["f1"] is not None and on_shots_axis(r["data_variant"]):
            pts.setdefault((f"{r['model_task']} from {r['init']} on {r['task']} {r['split']}", "eval"), []).append(
                (shots_of(r["data_variant"]), r["f1"]))
    if not pts:
        return False
    ks = sorted({k for series in pts.values() for k, _ in series if k is not None})
    has_full = any(k is None for series in pts.values() for k, _ in series)
    xpos = {k: i for i, k in enumerate(ks)}
    if has_full:
        xpos[None] = len(ks)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, ((label, kind), series) in enumerate(sorted(pts.items())):
        series = sorted(series, key=lambda kv: xpos[kv[0]])
        ax.plot([xpos[k] for k, _ in series], [v for _, v in series], marker="o" if kind == "log" else "x",
                ls="-" if kind == "log" else "--", color=f"C{i % 10}", label=label)
    ax.set_xticks(list(xpos.values()), [str(k) if k is not None else "full" for k in xpos])
    _style(ax, "training examples per class (k)", "macro-F1 (%)", "F1 versus shots")
    _save(fig, path)
    return True


# ----------------------------------------------------------------------------------------------------------------
# The report


def build_report(paths: Iterable[str], out_dir: str, subset: Optional[str] = None) -> Dict[str, Any]:
    """Collect runs and evaluations under `paths`; write tables and plots to `out_dir`; return report.json content."""
    col = collect(paths)
    if not col.runs and not col.evals:
        raise FileNotFoundError(f"no training log ({', '.join(LOG_NAMES)}) or metrics.json under {list(paths)}")
    os.makedirs(out_dir, exist_ok=True)
    speeds = [learning_speed(r, subset) for r in col.runs]
    eval_names = unique_names([p for p, _ in col.evals])
    results = [result_row(p, m, n) for (p, m), n in zip(col.evals, eval_names)]
    files: Dict[str, str] = {}

    write_csv(os.path.join(out_dir, "results.csv"), results, RESULT_COLUMNS)
    write_csv(os.path.join(out_dir, "learning.csv"), speeds, LEARNING_COLUMNS)
    files.update(results_csv="results.csv", learning_csv="learning.csv")
    if speeds:
        plot_losses(speeds, os.path.join(out_dir, "loss.png"))
        plot_valid_f1(speeds, os.path.join(out_dir, "valid_f1.png"))
        files.update(loss_png="loss.png", valid_f1_png="valid_f1.png")
    confusion = {}
    for (p, m), r in zip(col.evals, results):
        if m.get("confusion_matrix"):
            fname = f"confusion_{_safe(r['name'])}.png"
            plot_confusion(m, f"{r['name']}: {r['model_task']} ckpt on {r['task']} {r['split']}",
                           os.path.join(out_dir, fname))
            confusion[r["name"]] = fname
    if plot_f1_vs_shots(speeds, results, os.path.join(out_dir, "f1_vs_shots.png")):
        files["f1_vs_shots_png"] = "f1_vs_shots.png"

    md = ["# xmodal report", "", "## Evaluations (percent; metrics = slue or legacy)", "",
          markdown_table(results, RESULT_COLUMNS[:-1]) if results else "(none)\n",
          "## Training runs (validation from the training logs; F1 in percent)", "",
          markdown_table(speeds, LEARNING_COLUMNS[:-1],
                         scale={"best_valid_macro_f1": 100, "last_valid_macro_f1": 100}) if speeds else "(none)\n"]
    for key in ("loss_png", "valid_f1_png", "f1_vs_shots_png"):
        if key in files:
            md += [f"![{key[:-4]}]({files[key]})", ""]
    for name, fname in confusion.items():
        md += [f"![confusion {name}]({fname})", ""]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(md))
    report = {"format": "fairseq_xmodal.report/1", "results": results, "learning": speeds,
              "files": {**files, "report_md": "report.md", "confusion_png": confusion}}
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    return report
