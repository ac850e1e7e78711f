"""Sweep jobs: folder names built from the overrides, per-job status events, and the Slurm array table."""
import datetime
import hashlib
import json
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from ..files import atomic_write_text

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


def timestamp() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def append_event(job_dir: str, event: str, **fields: Any) -> None:
    os.makedirs(job_dir, exist_ok=True)
    with open(os.path.join(job_dir, STATUS_FILE), "a") as f:
        f.write(json.dumps({"event": event, "time": timestamp(), **fields}) + "\n")


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


def last_line(text: str) -> str:
    lines = [x.strip() for x in str(text).strip().splitlines() if x.strip()]
    return lines[-1] if lines else ""


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
