"""Reading a sweep's job folders back: status, attempts, wall time and the best validation of each job
(xmodal-sweep-table). The log lines are read by fairseq_log.py, the one reader of fairseq logs."""
import datetime
import glob
import os
import re
from typing import Any, Dict, Iterable, List, Optional

from omegaconf import OmegaConf

from ..fairseq_log import load_yaml, log_lines, parse_line, parse_stats
from .jobs import DONE_FILE, STATUS_FILE, read_events, read_table

_LOADED = re.compile(r"Loaded checkpoint (?P<path>\S+) \(epoch (?P<epoch>\d+) @ (?P<updates>\d+) updates\)")
_ERROR = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Interrupt)\b(?::.*)?$")
_SKIP_KEYS = {"epoch", "update", "wps", "ups", "wpb", "bsz", "num_updates", "lr", "gnorm", "clip", "train_wall", "wall",
              "gb_free", "loss_scale"}  # throughput and optimizer state, not validation results


def last_error_line(paths: Iterable[str]) -> str:
    """The last line that names a Python exception (or an ERROR log record) in any of these files."""
    found = ""
    for path in paths:
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    text = line.strip()
                    rec = parse_line(text)
                    if rec is not None and rec.level in ("ERROR", "CRITICAL"):
                        found = rec.msg.strip()
                    elif rec is None and _ERROR.match(text):
                        found = text
        except (FileNotFoundError, IsADirectoryError):
            continue
    return found


def read_job(job_dir: str, overrides: Optional[List[str]] = None, stale_after_s: float = 1800.0) -> Dict[str, Any]:
    """Everything xmodal-sweep-table shows about one job folder (finished, running, failed or not started)."""
    job: Dict[str, Any] = {"job": os.path.basename(job_dir.rstrip("/")), "path": os.path.abspath(job_dir)}
    events = read_events(job_dir)
    starts = [e for e in events if e.get("event") == "start"]
    if starts and "overrides" in starts[0]:
        overrides = starts[0]["overrides"]
    elif os.path.exists(os.path.join(job_dir, ".hydra", "overrides.yaml")):
        saved = load_yaml(os.path.join(job_dir, ".hydra", "overrides.yaml"))
        overrides = [str(x) for x in (OmegaConf.to_container(saved) if saved is not None else [])]
    job["overrides"] = " ".join(overrides or [])

    cfg = load_yaml(os.path.join(job_dir, ".hydra", "config.yaml"))

    def setting(key: str, default: Any) -> Any:
        return OmegaConf.select(cfg, key, default=default) if cfg is not None else default

    metric = str(setting("checkpoint.best_checkpoint_metric", "loss"))
    maximize = bool(setting("checkpoint.maximize_best_checkpoint_metric", False))
    valid_subsets = str(setting("dataset.valid_subset", "valid")).split(",")
    save_dir = str(setting("checkpoint.save_dir", "checkpoints"))
    job["metric"], job["maximize"] = metric, maximize
    job["max_update"] = setting("optimization.max_update", None)

    log_path = os.path.join(job_dir, "hydra_train.log")
    valid, num_updates, resumed, finished_in_log = [], None, [], False
    # wall time = the sum over starts of (last - first log time): a new start is fairseq's config dump at the top of
    # train.main, or a silence of more than 5 minutes (time in a queue between a requeue and the next start)
    spans: List[List[datetime.datetime]] = []
    for rec in log_lines(log_path):
        name, msg, when = rec.logger, rec.msg, rec.time
        if when is None:
            continue
        if (not spans or (name == "fairseq_cli.train" and msg.startswith("{'_name'"))
                or (when - spans[-1][1]).total_seconds() > 300):
            spans.append([when, when])
        spans[-1][1] = when
        if name in ("train", "train_inner") or name == valid_subsets[0]:
            stats = parse_stats(name, msg)
            if "num_updates" in stats:
                num_updates = stats["num_updates"]
            if name == valid_subsets[0] and metric in stats:
                valid.append(stats)
        elif name == "fairseq.checkpoint_utils" or name == "fairseq.trainer":
            loaded = _LOADED.search(msg)  # a resume names <save_dir>/checkpoint_last.pt; finetune_from_model its file
            if loaded and os.path.normpath(loaded.group("path")) == os.path.normpath(
                    os.path.join(save_dir, "checkpoint_last.pt")):
                resumed.append(int(loaded.group("updates")))
        elif name == "fairseq_cli.train" and msg.startswith("done training in"):
            finished_in_log = True
    job["num_updates"] = num_updates
    job["wall_s"] = int(sum((last - first).total_seconds() for first, last in spans)) if spans else None
    job["resumed_at"] = ",".join(str(u) for u in resumed)

    if valid:
        best = (max if maximize else min)(valid, key=lambda s: s[metric])
        job[f"best_{metric}"] = best[metric]
        job["best_update"] = best.get("num_updates")
        for key, value in best.items():
            if key not in _SKIP_KEYS and not key.startswith("best_") and key != metric:
                job[key] = value

    logs = [os.path.join(job_dir, "train.log"), log_path]
    for e in starts:
        logs += [p for p in e.get("logs", []) if p not in logs]
    last = next((e for e in reversed(events) if e.get("event") != "skip"), None)
    job["attempts"] = len(starts)
    job["requeues"] = sum(e.get("event") == "requeue" for e in events)
    age = None
    for p in (log_path, os.path.join(job_dir, "train.log"), os.path.join(job_dir, STATUS_FILE)):
        if os.path.exists(p):
            age = min(age if age is not None else float("inf"),
                      datetime.datetime.now().timestamp() - os.path.getmtime(p))
    error = ""
    if os.path.exists(os.path.join(job_dir, DONE_FILE)):
        status = "done"
    elif last is not None and last.get("event") == "failed":
        status, error = "failed", last.get("error") or last_error_line(logs)
    elif last is not None and last.get("event") == "requeue":
        status = "requeued"
    elif last is not None and last.get("event") == "killed":  # SIGKILL: OOM killer or node failure; resumable
        status, error = "interrupted", last.get("error") or "killed by SIGKILL"
    elif last is not None and last.get("event") == "cancelled":
        status = "cancelled"
    elif last is None and finished_in_log:
        status = "done"
    elif age is None:
        status = "pending"
    else:
        error = last_error_line(logs)
        if last is None and error:
            status = "failed"
        else:
            status = "running" if age < stale_after_s else "interrupted"
            error = "" if status == "running" else error
    job["status"] = status
    job["error"] = error
    return job


def sweep_jobs(sweep_dir: str) -> List[Dict[str, Any]]:
    """Job folders of a sweep folder, in table order: rows of every generated Slurm table (slurm/jobs-*.tsv, including
    jobs that never started), then every other sub-folder that holds a Hydra job. A job folder itself also works."""
    sweep_dir = os.path.abspath(sweep_dir)
    if os.path.isdir(os.path.join(sweep_dir, ".hydra")) or os.path.exists(os.path.join(sweep_dir, STATUS_FILE)):
        return [{"path": sweep_dir, "overrides": None}]
    jobs: Dict[str, Optional[List[str]]] = {}
    for table in sorted(glob.glob(os.path.join(glob.escape(sweep_dir), "slurm", "jobs-*.tsv")), key=os.path.getmtime):
        for row in read_table(table):
            jobs.setdefault(row[0], row[1])
    for entry in sorted(os.listdir(sweep_dir)) if os.path.isdir(sweep_dir) else []:
        path = os.path.join(sweep_dir, entry)
        if entry.startswith(".") or not os.path.isdir(path):
            continue
        if os.path.isdir(os.path.join(path, ".hydra")) or os.path.exists(os.path.join(path, STATUS_FILE)):
            jobs.setdefault(path, None)
    return [{"path": p, "overrides": o} for p, o in jobs.items()]
