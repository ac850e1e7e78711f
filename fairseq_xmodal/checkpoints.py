"""Building a task+model from a config and writing fairseq_xmodal checkpoints that every fairseq entry point takes
(`checkpoint.finetune_from_model`, `restore_file` + resets, `load_model_ensemble_and_task`)."""
import argparse
import errno
import json
import os
import tempfile
from typing import Any, Callable, Dict, List, Optional

import torch
from fairseq import tasks
from fairseq.dataclass.configs import FairseqConfig
from omegaconf import DictConfig, OmegaConf

from .modalities import TASKS
from .safe_load import safe_torch_load

# The plugin folder fairseq imports for common.user_dir (this package); ${xmodal_user_dir:} in the configs.
USER_DIR = os.path.dirname(os.path.abspath(__file__))
MODELS = ("speecht5", "speecht5_base", "speecht5_tiny")  # speecht5_*: names of the sizes before 0.2


def make_cfg(task: Dict[str, Any], model: Dict[str, Any], seed: int = 1) -> DictConfig:
    """A complete, resolved fairseq config with our task/model sections (user_dir set, so plain fairseq tools load it)."""
    cfg = OmegaConf.merge(
        OmegaConf.structured(FairseqConfig),
        {"common": {"user_dir": USER_DIR, "seed": seed}, "task": task, "model": model,
         "criterion": {"_name": "xmodal_classification"}},
    )
    from fairseq.dataclass.initialize import add_defaults

    add_defaults(cfg)
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))


def build_task_and_model(cfg: DictConfig):
    task = tasks.setup_task(cfg.task)
    return task, task.build_model(cfg.model)


def _mkstemp_beside(path: str):
    """A temp file in the target's directory (so os.replace is atomic) with normal umask permissions."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return fd, tmp


def _no_space(directory: str) -> bool:
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < (1 << 20)


def atomic_torch_save(obj, path: str):
    fd, tmp = _mkstemp_beside(path)
    os.close(fd)
    try:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # torch's zip writer reports ENOSPC/EIO as RuntimeError (iostream/write errors)
            directory = os.path.dirname(os.path.abspath(path))
            if _no_space(directory):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path) from None
            if not any(w in str(e) for w in ("write", "iostream", "inline_container")):
                raise
            raise OSError(errno.EIO, f"{os.strerror(errno.EIO)} ({str(e).splitlines()[0][:100]})", path) from None
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(text: str, path: str):
    """Write `text` to a temp file beside `path`, then rename it into place; no temp file survives a failure."""
    fd, tmp = _mkstemp_beside(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_together(writers: Dict[str, Callable[[str], None]]):
    """{target path: fn(tmp path) that writes it}: every target is replaced, or (on any error, e.g. a full disk)
    none is and the previous files are back; no temp or backup file is left behind either way."""
    temps: Dict[str, str] = {}
    backups: Dict[str, str] = {}
    placed: List[str] = []
    try:
        for target, write in writers.items():
            fd, tmp = _mkstemp_beside(target)
            os.close(fd)
            temps[target] = tmp
            try:
                write(tmp)
            except OSError as e:  # name the file the user asked for, not our temp file
                raise OSError(e.errno, e.strerror, target) from None
        for target in writers:
            if os.path.exists(target):
                backups[target] = f"{temps[target]}.old"
                os.replace(target, backups[target])
        for target in writers:
            os.replace(temps[target], target)
            placed.append(target)
    except BaseException:
        for target in placed:
            os.remove(target)
        for target, old in backups.items():
            os.replace(old, target)
        backups.clear()
        raise
    finally:
        for path in list(temps.values()) + list(backups.values()):
            if os.path.exists(path):
                os.remove(path)


def atomic_write_json(obj, path: str):
    atomic_write_text(json.dumps(obj, indent=2) + "\n", path)


def save_checkpoint(path: str, cfg: DictConfig, model_state: Dict[str, torch.Tensor], task_state: Dict[str, Any],
                    provenance: Optional[Dict[str, Any]] = None):
    """Minimal fairseq checkpoint: no optimizer state, update count 0, provenance kept in extra_state."""
    state = {
        "args": None,
        "cfg": OmegaConf.to_container(cfg, resolve=True),
        "model": {k: v.detach().cpu().contiguous() for k, v in model_state.items()},
        "criterion": None,
        "optimizer_history": [{"criterion_name": "ClassificationCriterion", "optimizer_name": "none",
                               "lr_scheduler_state": {}, "num_updates": 0}],
        "task_state": task_state,
        "extra_state": {"train_iterator": {"epoch": 1}, "xmodal_provenance": provenance or {}},
    }
    atomic_torch_save(state, path)


def load_state(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    return safe_torch_load(path, map_location="cpu")


def is_xmodal_checkpoint(state: Dict[str, Any]) -> bool:
    cfg = state.get("cfg") if isinstance(state, dict) else None
    return (isinstance(cfg, dict) and isinstance(cfg.get("model"), dict) and isinstance(cfg.get("task"), dict)
            and cfg["model"].get("_name") in MODELS and cfg["task"].get("_name") in TASKS)


def is_official_checkpoint(state: Dict[str, Any]) -> bool:
    cfg = state.get("cfg") if isinstance(state, dict) else None
    return isinstance(state, dict) and (isinstance(state.get("args"), argparse.Namespace) or (
        isinstance(cfg, dict) and isinstance(cfg.get("model"), argparse.Namespace)))
