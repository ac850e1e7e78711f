"""Building a task+model from a config and writing fairseq_xmodal checkpoints that every fairseq entry point takes
(`checkpoint.finetune_from_model`, `restore_file` + resets, `load_model_ensemble_and_task`)."""
import json
import os
import tempfile
from typing import Any, Dict, Optional

import torch
from fairseq import tasks
from fairseq.dataclass.configs import FairseqConfig
from omegaconf import DictConfig, OmegaConf

from .safe_load import safe_torch_load


def make_cfg(task: Dict[str, Any], model: Dict[str, Any], seed: int = 1) -> DictConfig:
    """A complete, resolved fairseq config with our task/model sections (user_dir set, so plain fairseq tools load it)."""
    from . import USER_DIR

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


def atomic_torch_save(obj, path: str):
    fd, tmp = _mkstemp_beside(path)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(obj, path: str):
    fd, tmp = _mkstemp_beside(path)
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


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
