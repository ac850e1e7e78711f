"""Building a task+model from a config and writing fairseq_xmodal checkpoints that every fairseq entry point takes
(`checkpoint.finetune_from_model`, `restore_file` + resets, `load_model_ensemble_and_task`)."""
import argparse
import os
from typing import Any, Dict, Optional

import torch
from fairseq import tasks
from fairseq.dataclass.configs import FairseqConfig
from omegaconf import DictConfig, OmegaConf

from .modalities import TASKS
from .files import atomic_torch_save
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
