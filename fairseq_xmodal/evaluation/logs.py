"""fairseq training runs -> per-epoch train/valid statistics and the run config, and learning speed (updates until
predictions stop being single-label).

Reading is fairseq_log.py's (the one reader of fairseq logs, shared with the sweep table): end-of-epoch lines in every
format fairseq writes them, and the run's config from its .hydra/config.yaml (the config dict fairseq_cli.train logs
only for a log without a .hydra folder). Per-update `train_inner` lines are ignored. A later line for the same
(subset, epoch) replaces an earlier one (resumed runs).
"""
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..fairseq_log import epoch_stats, log_lines, run_config
from ..lineage import describe_init_file, init_file

LOG_NAMES = ("hydra_train.log", "train.log")
SHOTS = re.compile(r"(?:^|\.)k(\d+)(?:\.|$)")


# ----------------------------------------------------------------------------------------------------------------
# Runs


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
        return describe_init_file(init_file({k: self._cfg("checkpoint", k)
                                             for k in ("finetune_from_model", "restore_file")}))

    @property
    def valid_subsets(self) -> List[str]:
        configured = [s for s in str(self._cfg("dataset", "valid_subset") or "").split(",") if s]
        return [s for s in configured if s in self.valid] + [s for s in self.valid if s not in configured]


def shots_of(train_subset: Optional[str]) -> Optional[int]:
    m = SHOTS.search(train_subset or "")
    return int(m.group(1)) if m else None


def on_shots_axis(train_subset: Optional[str]) -> bool:
    """k-shot splits (`train.k8`) and whole training splits (`train`, `fine-tune`); not balanced variants, and not the
    report's `none (transferred)` / `none (imported)` of an untrained checkpoint (split names have no spaces)."""
    if not train_subset or " " in train_subset or train_subset == "?":
        return False
    return shots_of(train_subset) is not None or "." not in train_subset


def parse_training_log(path: str, name: Optional[str] = None) -> RunLog:
    run = RunLog(path=os.path.abspath(path), name=name or os.path.basename(os.path.dirname(os.path.abspath(path))))
    records = list(log_lines(path))
    run.cfg = run_config(path, records)
    for rec in records:
        ep = epoch_stats(rec)
        if ep is None or ep.epoch is None:
            continue
        if ep.kind == "train":
            run.train[ep.epoch] = ep.stats
        else:
            run.valid.setdefault(ep.subset, {})[ep.epoch] = ep.stats
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
