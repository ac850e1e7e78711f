"""Sweeps of `fairseq-hydra-train` jobs: job folder names, per-job bookkeeping, safe resumption, and reading results.

Used by fairseq_xmodal/config/sweep/common.yaml (through the Hydra callback below), `xmodal-slurm-array` and `xmodal-sweep-table`;
docs/sweeps.md explains the whole workflow.

Every job of a sweep lives in `<hydra.sweep.dir>/<job name>`. The job name is built from the job's overrides by the
`${xmodal_job_name:}` resolver (no timestamps), so a relaunched or requeued job finds its
`checkpoints/checkpoint_last.pt` again and fairseq resumes it with the same update count. In that folder:

  DONE                 written when training returned normally; a job started again with DONE present does nothing
  sweep_status.jsonl   one JSON object per event: start / done / failed / skip / requeue / killed (the last two from
                       the Slurm array script), with attempt numbers, Slurm ids, pid and host
  hydra_train.log      fairseq's log (Hydra), appended over attempts; xmodal-sweep-table parses it
  train.log            stdout+stderr of fairseq-hydra-train when run by the Slurm array script
"""
import datetime
import glob
import hashlib
import json
import logging
import os
import re
import socket
import zipfile
from typing import Any, Dict, Iterable, List, Optional, Sequence

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .fairseq_patches import launcher_rank
from .files import atomic_copy, atomic_write_text

logger = logging.getLogger(__name__)

DONE_FILE = "DONE"
STATUS_FILE = "sweep_status.jsonl"
SLURM_ENV = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "SLURM_JOB_NODELIST")
MAX_NAME_BYTES = 200


class SweepError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------- job folder names


def _name_value(value: str) -> str:
    """Override values become part of a folder name: a path (anything with '/') becomes `<basename>-<hash of path>`."""
    if "/" in value:
        stem = os.path.basename(value.rstrip("/")) or "root"
        return f"{stem}-{hashlib.sha1(value.encode()).hexdigest()[:8]}"
    return value


def _name_key(key: str) -> str:
    prefix = re.match(r"^[+~]*", key).group(0)
    bare = key[len(prefix):]
    if bare.startswith("sweep/"):  # our own groups: sweep/batch=bs4_uf4 -> batch=bs4_uf4
        bare = bare[len("sweep/"):]
    return prefix + bare.replace("/", ".")


def override_key(line: str) -> str:
    """`+sweep/batch@pkg=x` -> `sweep/batch`: the key Hydra matches against override_dirname.exclude_keys."""
    key = line.split("=", 1)[0]
    return key.lstrip("+~").split("@", 1)[0]


def job_name(overrides: Iterable[str], exclude_keys: Sequence[str] = ("task.data",), kv_sep: str = "=",
             item_sep: str = ",") -> str:
    """Like Hydra's `hydra.job.override_dirname` (sorted `key=value` items), but always a single safe folder name:
    path values are shortened to name-hash, `sweep/` group prefixes dropped, other '/' in keys become '.', and very long
    names are cut and suffixed with a hash of the whole name. Overrides of the excluded keys are left out."""
    items = []
    for line in overrides:
        if override_key(line) in exclude_keys:
            continue
        key, sep, value = line.partition("=")
        items.append(f"{_name_key(key)}{kv_sep}{_name_value(value)}" if sep else _name_key(key))
    name = re.sub(r"\s+", "_", item_sep.join(sorted(items))) or "default"
    if len(name.encode()) > MAX_NAME_BYTES:
        name = name[:150].rstrip(item_sep) + "-" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return name


def _job_name_resolver(*, _root_: DictConfig) -> str:
    hydra = _root_.hydra
    dirname = hydra.job.config.override_dirname
    return job_name(list(hydra.overrides.task), list(dirname.exclude_keys), dirname.kv_sep, dirname.item_sep)


if hasattr(OmegaConf, "register_new_resolver") and not OmegaConf.has_resolver("xmodal_job_name"):  # omegaconf >= 2.1
    OmegaConf.register_new_resolver("xmodal_job_name", _job_name_resolver)


# ---------------------------------------------------------------------------------------------- per-job status


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def append_event(job_dir: str, event: str, **fields: Any) -> None:
    os.makedirs(job_dir, exist_ok=True)
    with open(os.path.join(job_dir, STATUS_FILE), "a") as f:
        f.write(json.dumps({"event": event, "time": _now(), **fields}) + "\n")


def read_events(job_dir: str) -> List[Dict[str, Any]]:
    events = []
    try:
        with open(os.path.join(job_dir, STATUS_FILE)) as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue  # a line cut by a kill: ignore it
    except FileNotFoundError:
        pass
    return events


def recorded_overrides(job_dir: str, events: Optional[List[Dict[str, Any]]] = None) -> Optional[List[str]]:
    """The overrides of the job that first started in this folder (None: no job has started there)."""
    events = read_events(job_dir) if events is None else events
    return next((e["overrides"] for e in events if e.get("event") == "start" and "overrides" in e), None)


def conflict_message(job_dir: str, previous: Sequence[str], overrides: Sequence[str]) -> Optional[str]:
    if sorted(previous) == sorted(overrides):
        return None
    return (f"job folder {job_dir} already holds a job with other overrides; resuming it would mix two "
            f"configurations.\n  there: {' '.join(previous)}\n  now:   {' '.join(overrides)}\n"
            f"Use another hydra.sweep.dir (one per study and data folder), or delete that folder.")


def slurm_ids() -> Dict[str, str]:
    return {k.lower(): os.environ[k] for k in SLURM_ENV if k in os.environ}


def _last_line(text: str) -> str:
    lines = [x.strip() for x in str(text).strip().splitlines() if x.strip()]
    return lines[-1] if lines else ""


# ---------------------------------------------------------------------------------------------- checkpoints


def checkpoint_is_complete(path: str) -> bool:
    """torch.save writes a zip archive whose directory is at the very end: a file cut short by a kill has none."""
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def newest_complete_checkpoint(save_dir: str, exclude: str = "checkpoint_last.pt") -> Optional[str]:
    """The most recently written complete `checkpoint*.pt` of save_dir other than `exclude`, or None."""
    skip = os.path.join(save_dir, exclude)
    candidates = [p for p in glob.glob(os.path.join(glob.escape(save_dir), "checkpoint*.pt")) if p != skip]
    return max((p for p in candidates if checkpoint_is_complete(p)), key=os.path.getmtime, default=None)


def repair_last_checkpoint(save_dir: str, last_name: str = "checkpoint_last.pt") -> Optional[str]:
    """Make `checkpoint_last.pt` the newest complete checkpoint before fairseq resumes from it.

    fairseq writes the first file of a save atomically (checkpoint_E_U.pt or checkpoint_best.pt) and then *copies* it to
    the others, checkpoint_last.pt last. A job killed during that copy leaves a truncated checkpoint_last.pt (fairseq
    would crash on it at every requeue); one killed just before it leaves the previous save. Either way the newest
    complete `checkpoint*.pt` holds the state fairseq meant to save, so it is copied (atomically) to checkpoint_last.pt.
    Returns a description of what was done, or None when nothing was needed."""
    last = os.path.join(save_dir, last_name)
    newest = newest_complete_checkpoint(save_dir, exclude=last_name)
    last_exists = os.path.exists(last)
    last_ok = last_exists and checkpoint_is_complete(last)
    if last_ok and (newest is None or os.path.getmtime(newest) <= os.path.getmtime(last)):
        return None
    if newest is None:
        if not last_exists:
            return None
        os.replace(last, last + ".incomplete")
        return f"{last} is incomplete and no other complete checkpoint exists: moved aside to {last}.incomplete"
    atomic_copy(newest, last)
    why = "was stale" if last_ok else ("was incomplete" if last_exists else "was missing")
    return f"{last_name} {why}: replaced by a copy of {os.path.basename(newest)}"


# ---------------------------------------------------------------------------------------------- the Hydra callback


def _skip_finished(cfg, main, **kwargs):
    logger.info("this job finished before (DONE marker in its folder): nothing to do. Delete DONE to train again.")


class _Refuse:
    def __init__(self, message: str):
        self.message = message

    def __call__(self, cfg, main, **kwargs):
        raise SweepError(self.message)


class SweepJobCallback(Callback):
    """Hydra callback for sweep jobs (fairseq_xmodal/config/sweep/common.yaml: hydra.callbacks.xmodal_sweep).

    At job start, in the job's own folder: a job with a DONE marker does not train again (fairseq would otherwise run
    one more update past max_update); a folder that already holds a job with *other* overrides (e.g. the same sweep
    relaunched on another task.data, which is left out of folder names) is refused instead of resumed; a half-copied
    checkpoint_last.pt is repaired; a `start` event is recorded. At job end: DONE and a `done` event, or a `failed`
    event with the error. Hydra runs callbacks in the job's process, for submitit jobs as for single runs."""

    def __init__(self) -> None:
        self._action: Optional[str] = None
        self._saved_call_main = None

    def _replace_training(self, fn) -> None:
        # fairseq_cli.hydra_train._hydra_main trains through fairseq.distributed.utils.call_main(cfg, main)
        from fairseq.distributed import utils as distributed_utils

        self._saved_call_main = distributed_utils.call_main
        distributed_utils.call_main = fn

    def _restore_training(self) -> None:
        if self._saved_call_main is not None:
            from fairseq.distributed import utils as distributed_utils

            distributed_utils.call_main = self._saved_call_main
            self._saved_call_main = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        job_dir = str(config.hydra.runtime.output_dir)
        overrides = [str(x) for x in config.hydra.overrides.task]
        events = read_events(job_dir)
        previous = recorded_overrides(job_dir, events)
        conflict = conflict_message(job_dir, previous, overrides) if previous is not None else None
        if conflict:
            self._action = "refuse"
            self._replace_training(_Refuse(conflict))
            return
        if os.path.exists(os.path.join(job_dir, DONE_FILE)):
            self._action = "skip"
            append_event(job_dir, "skip", pid=os.getpid(), **slurm_ids())
            self._replace_training(_skip_finished)
            return
        self._action = "run"
        if launcher_rank() != 0:  # one process per rank (srun tasks, torchrun): rank 0 keeps the books
            self._action = "rank"
            return
        save_dir = str(OmegaConf.select(config, "checkpoint.save_dir", default="checkpoints"))
        repaired = repair_last_checkpoint(os.path.join(job_dir, save_dir))
        if repaired:
            logger.warning(repaired)
        attempt = 1 + sum(e.get("event") == "start" for e in events)
        extra: Dict[str, Any] = {}
        if os.environ.get("SUBMITIT_EXECUTOR"):
            try:
                import submitit

                env = submitit.JobEnvironment()
                extra = {"submitit_job_id": env.job_id, "logs": [str(env.paths.stdout), str(env.paths.stderr)]}
            except Exception:  # not inside a submitit job after all
                pass
        append_event(job_dir, "start", attempt=attempt, overrides=overrides, pid=os.getpid(),
                     host=socket.gethostname(), repaired=repaired, **slurm_ids(), **extra)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        self._restore_training()
        action, self._action = self._action, None
        if action != "run":  # skipped, refused, or not rank 0
            return
        job_dir = str(config.hydra.runtime.output_dir)
        if job_return.status == JobStatus.COMPLETED:
            with open(os.path.join(job_dir, DONE_FILE), "w") as f:
                f.write(_now() + "\n")
            append_event(job_dir, "done", pid=os.getpid())
        else:
            error = job_return._return_value
            append_event(job_dir, "failed", error=f"{type(error).__name__}: {_last_line(error)}", pid=os.getpid())


# ---------------------------------------------------------------------------------------------- reading a job's results

# Hydra's job log format: [2026-11-22 05:00:14,579][valid][INFO] - message
_LOG_LINE = re.compile(r"^\[(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+\]\[(?P<logger>[^\]]+)\]"
                       r"\[(?P<level>\w+)\] - (?P<msg>.*)$")
_LOADED = re.compile(r"Loaded checkpoint (?P<path>\S+) \(epoch (?P<epoch>\d+) @ (?P<updates>\d+) updates\)")
_ERROR = re.compile(r"^\s*(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception|Interrupt)\b(?::.*)?$")
_SKIP_KEYS = {"epoch", "update", "wps", "ups", "wpb", "bsz", "num_updates", "lr", "gnorm", "clip", "train_wall", "wall",
              "gb_free", "loss_scale"}  # throughput and optimizer state, not validation results


def _number(value: Any) -> Any:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return value
    return int(x) if x.is_integer() and "." not in str(value) and "e" not in str(value).lower() else x


def parse_stats(logger_name: str, msg: str) -> Dict[str, Any]:
    """The numbers of one fairseq progress line, log_format json or simple, without the `<subset>_` json prefix."""
    msg = msg.strip()
    if msg.startswith("{"):
        try:
            raw = json.loads(msg)
        except ValueError:
            return {}
        prefix = logger_name + "_"
        return {(k[len(prefix):] if k.startswith(prefix) else k): _number(v) for k, v in raw.items()}
    stats: Dict[str, Any] = {}
    if " | " in msg:  # simple, end of epoch / validation: "epoch 002 | valid on 'valid' subset | loss 1.6 | ..."
        for part in msg.split(" | "):
            key, _, value = part.strip().rpartition(" ")
            if key and re.fullmatch(r"[\w.\-]+", key):
                stats[key] = _number(value)
    elif "=" in msg:  # simple, train_inner: "epoch 003:      4 / 8 loss=1.701, accuracy=0.3041, ..."
        for key, value in re.findall(r"([\w.\-]+)=([^,\s]+)", msg):
            stats[key] = _number(value)
    return stats


def _log_lines(path: str):
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = _LOG_LINE.match(line.rstrip("\n"))
                if m:
                    yield m
    except FileNotFoundError:
        return


def last_error_line(paths: Iterable[str]) -> str:
    """The last line that names a Python exception (or an ERROR log record) in any of these files."""
    found = ""
    for path in paths:
        try:
            with open(path, errors="replace") as f:
                for line in f:
                    text = line.strip()
                    m = _LOG_LINE.match(text)
                    if m and m.group("level") in ("ERROR", "CRITICAL"):
                        found = m.group("msg").strip()
                    elif not m and _ERROR.match(text):
                        found = text
        except (FileNotFoundError, IsADirectoryError):
            continue
    return found


def _load_yaml(path: str) -> Optional[Any]:
    try:
        return OmegaConf.load(path)
    except Exception:
        return None


def read_job(job_dir: str, overrides: Optional[List[str]] = None, stale_after_s: float = 1800.0) -> Dict[str, Any]:
    """Everything xmodal-sweep-table shows about one job folder (finished, running, failed or not started)."""
    job: Dict[str, Any] = {"job": os.path.basename(job_dir.rstrip("/")), "path": os.path.abspath(job_dir)}
    events = read_events(job_dir)
    starts = [e for e in events if e.get("event") == "start"]
    if starts and "overrides" in starts[0]:
        overrides = starts[0]["overrides"]
    elif os.path.exists(os.path.join(job_dir, ".hydra", "overrides.yaml")):
        saved = _load_yaml(os.path.join(job_dir, ".hydra", "overrides.yaml"))
        overrides = [str(x) for x in (OmegaConf.to_container(saved) if saved is not None else [])]
    job["overrides"] = " ".join(overrides or [])

    cfg = _load_yaml(os.path.join(job_dir, ".hydra", "config.yaml"))

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
    for m in _log_lines(log_path):
        name, msg = m.group("logger"), m.group("msg")
        when = datetime.datetime.strptime(m.group("time"), "%Y-%m-%d %H:%M:%S")
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


# ---------------------------------------------------------------------------------------------- the Slurm array table


def write_table(path: str, rows: Sequence[Sequence[str]]) -> None:
    """One line per array task (line i+1 = SLURM_ARRAY_TASK_ID i): `<job dir>\\t<override>\\t<override>...`."""
    for row in rows:
        for field in row:
            if "\t" in field or "\n" in field:
                raise SweepError(f"a tab or newline cannot be passed through the array table: {field!r}")
    atomic_write_text("".join("\t".join(row) + "\n" for row in rows), path)


def read_table(path: str) -> List[List[Any]]:
    rows = []
    with open(path) as f:
        for line in f:
            fields = line.rstrip("\n").split("\t")
            if fields and fields[0]:
                rows.append([fields[0], fields[1:]])
    return rows
