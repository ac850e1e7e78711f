"""The packaged configs: inheritance through `defaults` changes no value, the size presets equal the Python presets,
the Hydra plugin is light, and an unknown config name is a one-line error."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
from fairseq.dataclass.utils import merge_with_parent
from fairseq.models import MODEL_DATACLASS_REGISTRY
from fairseq.dataclass.initialize import hydra_init
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.file_config_source import FileConfigSource
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf, open_dict

from conftest import BIN, CONFIG_DIR, run_cli
from fairseq_xmodal.models.speecht5 import SpeechT5Config, SpeechT5TinyConfig
from hydra_plugins.xmodal import adopt_fairseq_schema

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "config_golden.json")


def composed(name, overrides):
    """What fairseq-hydra-train trains with: the composed job config (resolved, common.user_dir left out, model
    completed with its dataclass defaults as fairseq's add_defaults does) and the Hydra settings a sweep depends on.
    As in fairseq-hydra-train: FairseqConfig stored under the config name, then the plugin's adopt_fairseq_schema."""
    GlobalHydra.instance().clear()
    hydra_init(name)
    adopt_fairseq_schema(name, FileConfigSource("test", f"file://{CONFIG_DIR}"))
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.1"):
            cfg = compose(name, overrides=["task.data=/data", *overrides], return_hydra_config=True)
    finally:
        ConfigStore.instance().repo.pop(f"{name}.yaml", None)
        ConfigStore.instance().repo.pop("fairseq_schema", None)
    h = cfg.hydra
    hydra = {"run": OmegaConf.to_container(h.run), "sweep": OmegaConf.to_container(h.sweep),
             "callbacks": OmegaConf.to_container(h.callbacks), "job_config": OmegaConf.to_container(h.job.config),
             "sweeper_params": OmegaConf.to_container(h.sweeper.params) if h.sweeper.get("params") else None,
             "launcher": OmegaConf.to_container(h.launcher) if "launcher" in h else None}
    GlobalHydra.instance().clear()
    OmegaConf.set_struct(cfg, False)
    del cfg["hydra"]
    job = OmegaConf.to_container(cfg, resolve=True)
    job["common"].pop("user_dir", None)
    model = job.pop("model")
    job["model_completed"] = OmegaConf.to_container(
        merge_with_parent(MODEL_DATACLASS_REGISTRY[model["_name"]](), OmegaConf.create(model)), enum_to_str=True)
    return {"job": job, "hydra": hydra}


def test_configs_resolve_to_the_recorded_values():
    """tests/data/config_golden.json was composed, as fairseq-hydra-train composes (FairseqConfig schema included),
    from the configs before they inherited from each other (each a full copy, sizes as two registered models): every
    config and sweep composes to exactly the same values, fairseq's defaults included. Without adopt_fairseq_schema
    the inheriting configs would get fairseq's defaults (lr 0.25, max_update 0, cpu false, ...)."""
    with open(GOLDEN) as f:
        golden = json.load(f)
    assert len(golden) == 23
    for case, expected in golden.items():
        name, *overrides = case.split(" ")
        assert json.loads(json.dumps(composed(name, overrides), sort_keys=True, default=str)) == expected, case


def test_size_presets_match_the_python_presets():
    """config/model/speecht5_tiny.yaml is SpeechT5TinyConfig; speecht5_base.yaml is the dataclass defaults."""
    tiny = OmegaConf.to_container(OmegaConf.load(os.path.join(CONFIG_DIR, "model", "speecht5_tiny.yaml")))
    base = OmegaConf.to_container(OmegaConf.load(os.path.join(CONFIG_DIR, "model", "speecht5_base.yaml")))
    assert tiny.pop("_name") == base.pop("_name") == "speecht5" and base == {}
    differs = {f.name: getattr(SpeechT5TinyConfig(), f.name) for f in dataclasses.fields(SpeechT5Config)
               if getattr(SpeechT5TinyConfig(), f.name) != getattr(SpeechT5Config(), f.name)}
    assert tiny == differs


def test_old_model_names_build_the_same_model():
    """cfg.model._name = speecht5_tiny / speecht5_base (checkpoints written before the rename) still builds: the
    architecture function fills from its own size preset, so a bare old name gives the old dims."""
    from fairseq import models
    from fairseq_xmodal.models.speecht5 import SpeechT5Classifier

    for old, preset in (("speecht5_tiny", SpeechT5TinyConfig), ("speecht5_base", SpeechT5Config)):
        cfg = OmegaConf.create({"_name": old})
        assert models.ARCH_MODEL_REGISTRY[old] is SpeechT5Classifier
        with open_dict(cfg):
            models.ARCH_CONFIG_REGISTRY[old](cfg)
        for f in dataclasses.fields(preset):
            if f.name != "_name":
                assert cfg[f.name] == getattr(preset(), f.name), (old, f.name)


def test_plugin_imports_nothing_heavy():
    """Every Hydra app of the environment loads the plugin; it must not load torch, fairseq or fairseq_xmodal."""
    code = ("import sys; from hydra.core.plugins import Plugins; from hydra.plugins.search_path_plugin import "
            "SearchPathPlugin; from hydra._internal.utils import create_config_search_path;"
            "sp = create_config_search_path(None);"
            "print([e.path for e in sp.get_path() if e.provider == 'fairseq-xmodal']);"
            "print(sorted(m for m in ('torch', 'fairseq', 'fairseq_xmodal') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    paths, heavy = proc.stdout.strip().splitlines()[-2:]
    assert paths == f"['file://{CONFIG_DIR}']"
    assert heavy == "[]"


def test_unknown_config_name_is_one_line(tmp_path):
    """Without the check, fairseq's hydra_init stores an empty FairseqConfig under any --config-name and training
    fails later with "Key 'data' is not in struct"."""
    proc = subprocess.run([os.path.join(BIN, "fairseq-hydra-train"), "--config-name", "t2c_dmo", "task.data=/x"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    # (fairseq's own start-up notices before it are the command-convention work's; ours is one line, no traceback)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "no config named 't2c_dmo'" in lines[-1] and "--config-dir" in lines[-1], proc.stderr
    assert "Traceback" not in proc.stderr and "not in struct" not in proc.stderr


@pytest.mark.parametrize("config", ["t2c_demo", "s2c_bucketed"])
def test_packaged_config_found_from_any_directory(tmp_path, config):
    """--config-name alone, from a folder without configs, composes the packaged config (not fairseq's empty entry);
    a user's own config in --config-dir extends a packaged one through `defaults`."""
    proc = subprocess.run([os.path.join(BIN, "fairseq-hydra-train"), "--config-name", config, "task.data=/x",
                           "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = OmegaConf.create(proc.stdout[proc.stdout.index("common:"):])
    assert job.task.data == "/x" and job.model._name == "speecht5" and job.criterion._name == "xmodal_classification"
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "my_recipe.yaml").write_text(f"defaults:\n  - {config}\n  - _self_\noptimization:\n"
                                                       f"  max_update: 7\n")
    proc = subprocess.run([os.path.join(BIN, "fairseq-hydra-train"), "--config-dir", "mine", "--config-name",
                           "my_recipe", "task.data=/x", "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mine = OmegaConf.create(proc.stdout[proc.stdout.index("common:"):])
    assert mine.optimization.max_update == 7
    mine.optimization.max_update = job.optimization.max_update
    assert mine == job


def test_checkpoint_with_old_model_name_evaluates_identically(imported_init, corpus_dir, tmp_path):
    """A checkpoint written before the rename holds every model field and `_name: speecht5_tiny`: it loads through the
    legacy architecture and evaluates to the same predictions and metrics as under the new name."""
    import torch

    new = imported_init["t2c"]
    state = torch.load(new, weights_only=False)
    assert state["cfg"]["model"]["_name"] == "speecht5" and state["cfg"]["model"]["encoder_layers"] == 2
    state["cfg"]["model"]["_name"] = "speecht5_tiny"
    old = str(tmp_path / "old_name.pt")
    torch.save(state, old)
    outputs = []
    for ckpt, name in ((new, "new"), (old, "old")):
        out = tmp_path / name
        run_cli(["xmodal-evaluate", "--checkpoint", ckpt, "--task", "t2c", "--data", corpus_dir, "--split", "valid",
                 "--out", str(out)])
        metrics = json.loads((out / "metrics.json").read_text())
        metrics = {k: v for k, v in metrics.items() if "checkpoint" not in k}
        outputs.append(((out / "predictions.tsv").read_text(), metrics))
    assert outputs[0] == outputs[1]


def test_a_users_config_of_a_packaged_name_wins(tmp_path):
    """--config-dir comes before the packaged configs on the search path."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "t2c_demo.yaml").write_text("defaults:\n  - s2c_demo\n  - _self_\noptimization:\n"
                                                     "  max_update: 11\n")
    proc = subprocess.run([os.path.join(BIN, "fairseq-hydra-train"), "--config-dir", "mine", "--config-name",
                           "t2c_demo", "task.data=/x", "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = OmegaConf.create(proc.stdout[proc.stdout.index("common:"):])
    assert job.optimization.max_update == 11 and job.task._name == "s2c" and job.common.cpu is True
