"""Checkpoints that carry code never run it; 2021-era (numpy 1.x) checkpoints load; refusals name the file.

Every refusal is checked through the console commands (exit 2, one line naming the file, no traceback, nothing
written) and through fairseq's own loader (`load_model_ensemble_and_task`, `load_checkpoint_to_cpu`)."""
import argparse
import io
import os

import numpy as np
import pytest
import torch
from fairseq import checkpoint_utils

from conftest import run_cli
from refusals import assert_refused
from fairseq_xmodal.checkpoints import load_state
from fairseq_xmodal.models.conv_spec import ConvSpecError, parse_conv_layers
from fairseq_xmodal.safe_load import CheckpointError, UnsafeCheckpointError


def payload(marker) -> str:
    return f"__import__('os').system('touch {marker}')"


def test_parser_accepts_the_official_syntax_only():
    assert parse_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == \
        [(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2
    assert parse_conv_layers("[(64, 10, 5), (64, 3, 2)]") == [(64, 10, 5), (64, 3, 2)]
    for bad in ("__import__('os').system('true')", "[(1,1,1)] * 10**9", "[(512,10,5)] * 1000", "[(1.5,1,1)]",
                "[('a',1,1)]", "[(1,1)]", "[]", "x", "[(1,1,1)] - [(1,1,1)]", "[(True,1,1)]", "lambda: 0"):
        with pytest.raises(ConvSpecError, match="conv_feature_layers in f.pt"):
            parse_conv_layers(bad, "f.pt")


@pytest.fixture()
def evil_xmodal(imported_init, tmp_path):
    """The imported s2c init with a shell command as its conv spec (a plain string passes any unpickler)."""
    marker = tmp_path / "MARKER"
    state = load_state(imported_init["s2c"])
    state["cfg"]["model"]["conv_feature_layers"] = payload(marker)
    path = tmp_path / "evil_spec.pt"
    torch.save(state, path)
    return str(path), marker


def test_code_in_conv_spec_is_refused_everywhere_and_never_runs(evil_xmodal, corpus_dir, tmp_path, monkeypatch):
    path, marker = evil_xmodal
    before = open(path, "rb").read()
    # fairseq's own loaders: ensembles, and what finetune_from_model / restore_file use
    with pytest.raises(UnsafeCheckpointError, match=f"{path}.*conv_feature_layers"):
        checkpoint_utils.load_model_ensemble_and_task([path])
    with pytest.raises(UnsafeCheckpointError, match=path):
        checkpoint_utils.load_checkpoint_to_cpu(path)
    # the model itself never evaluates the string either (a config override, no checkpoint involved)
    from fairseq_xmodal.checkpoints import build_task_and_model, make_cfg

    cfg = make_cfg({"_name": "s2c", "data": corpus_dir}, {"_name": "speecht5_tiny", "conv_feature_layers": payload(marker)})
    with pytest.raises(ConvSpecError, match="conv_feature_layers"):
        build_task_and_model(cfg)
    out = tmp_path / "out"
    cmds = [
        ["xmodal-evaluate", "--checkpoint", path, "--task", "s2c", "--data", corpus_dir, "--out", str(out)],
        ["xmodal-transfer", "--source", path, "--task", "t2c", "--data", corpus_dir, "--out", str(out / "t.pt")],
        ["xmodal-import-official", "--checkpoint", path, "--task", "t2c", "--data", corpus_dir,
         "--out", str(out / "i.pt")],
        ["xmodal-probe", "--checkpoint", path, "--modality", "speech", "--data", corpus_dir, "--out", str(out)],
    ]
    for cmd in cmds:
        assert_refused(run_cli(cmd, check=False), path, "conv_feature_layers")
    assert not marker.exists()
    assert not out.exists()
    assert open(path, "rb").read() == before


def test_code_in_official_namespace_spec_is_refused(official_tiny, corpus_dir, tmp_path):
    marker = tmp_path / "MARKER"
    state = load_state(official_tiny)
    state["cfg"]["model"].conv_feature_layers = payload(marker)
    path = str(tmp_path / "speecht5_evil.pt")
    torch.save(state, path)
    out = tmp_path / "x.pt"
    assert_refused(run_cli(["xmodal-import-official", "--checkpoint", path, "--task", "s2c", "--data", corpus_dir,
                            "--out", str(out)], check=False), path, "cfg.model")
    # a string fairseq itself would eval (optimizer betas) is refused as well
    state = load_state(official_tiny)
    state["cfg"]["model"].adam_betas = payload(marker)
    torch.save(state, path)
    with pytest.raises(UnsafeCheckpointError, match="adam_betas"):
        checkpoint_utils.load_checkpoint_to_cpu(path)
    assert not marker.exists() and not out.exists()


def test_finetune_start_refuses_code_in_the_init_checkpoint(evil_xmodal, corpus_dir, tmp_path):
    from conftest import hydra_train

    path, marker = evil_xmodal
    run = tmp_path / "run"
    proc = hydra_train("s2c_demo", str(run), f"task.data={corpus_dir}", "optimization.max_update=1",
                       f"checkpoint.finetune_from_model={path}", check=False)
    assert proc.returncode != 0
    assert f"refusing to load {path}" in proc.stdout + proc.stderr
    assert not marker.exists()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_is_refused_by_every_command(tmp_path, corpus_dir):
    marker = tmp_path / "MARKER"
    path = str(tmp_path / "evil_pickle.pt")
    torch.save({"model": {"w": torch.zeros(1)}, "cfg": {"evil": _Payload(marker)}}, path)
    for cmd in (["xmodal-evaluate", "--checkpoint", path, "--task", "t2c", "--data", corpus_dir,
                 "--out", str(tmp_path / "e")],
                ["xmodal-import-official", "--checkpoint", path, "--task", "t2c", "--data", corpus_dir,
                 "--out", str(tmp_path / "i.pt")],
                ["xmodal-prepare-transplants", "--source", path, "--task", "t2c", "--data", corpus_dir,
                 "--base", path, "--out", str(tmp_path / "tp")],
                ["xmodal-transfer", "--source", path, "--task", "t2c", "--data", corpus_dir,
                 "--out", str(tmp_path / "t.pt")],
                ["xmodal-probe", "--checkpoint", path, "--modality", "text", "--data", corpus_dir,
                 "--out", str(tmp_path / "p")]):
        assert_refused(run_cli(cmd, check=False), path, "allow-list")
    with pytest.raises(UnsafeCheckpointError, match=path):  # fairseq's loader names the file, not "<stream>"
        checkpoint_utils.load_checkpoint_to_cpu(path)
    assert not marker.exists()
    assert not any((tmp_path / n).exists() for n in ("e", "i.pt", "t.pt", "tp", "p"))


# ---------------------------------------------------------------------------------------------------------------
# numpy 1.x module names


def numpy1_save(state, path):
    """torch.save in the legacy (non-zip) format, then rewrite numpy-2 GLOBAL opcodes to the numpy-1 module names:
    the bytes a checkpoint written under numpy 1.x holds."""
    buf = io.BytesIO()
    torch.save(state, buf, _use_new_zipfile_serialization=False)
    raw = buf.getvalue()
    n = raw.count(b"cnumpy._core.multiarray\n")
    assert n >= 2  # protocol 2: GLOBAL opcodes "c<module>\n<name>\n" for scalar and _reconstruct
    raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"numpy._core" not in raw and b"cnumpy.core.multiarray\nscalar\n" in raw
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in raw
    with open(path, "wb") as f:
        f.write(raw)


def numpy_extra_state():
    return {"best": np.float64(0.625), "val_loss": np.float32(1.25), "steps": np.int64(42),
            "meters": {"loss": np.arange(5, dtype=np.float64), "counts": np.array([[1, 2], [3, 4]], dtype=np.int64)}}


def test_numpy1_checkpoints_load_and_import_strictly(official_tiny, imported_init, corpus_dir, tmp_path):
    # an official pretrain checkpoint as written in 2021: numpy scalars/arrays in extra_state, numpy-1 names
    state = load_state(official_tiny)
    state["extra_state"].update(numpy_extra_state())
    legacy = str(tmp_path / "speecht5_numpy1.pt")
    numpy1_save(state, legacy)
    got = load_state(legacy)["extra_state"]
    assert got["best"] == np.float64(0.625) and isinstance(got["best"], np.float64)
    assert got["val_loss"] == np.float32(1.25) and got["steps"] == 42
    assert np.array_equal(got["meters"]["counts"], [[1, 2], [3, 4]]) and got["meters"]["counts"].dtype == np.int64
    out = str(tmp_path / "t2c.pt")
    proc = run_cli(["xmodal-import-official", "--checkpoint", legacy, "--task", "t2c", "--data", corpus_dir,
                    "--out", out])
    assert "newly_initialised: 1" in proc.stdout
    ref = str(tmp_path / "ref.pt")
    run_cli(["xmodal-import-official", "--checkpoint", official_tiny, "--task", "t2c", "--data", corpus_dir,
             "--out", ref])
    a, b = load_state(out)["model"], load_state(ref)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # a fairseq_xmodal checkpoint with numpy-1 names, through fairseq's loader
    state = load_state(imported_init["t2c"])
    state["extra_state"].update(numpy_extra_state())
    ours = str(tmp_path / "xmodal_numpy1.pt")
    numpy1_save(state, ours)
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([ours])
    assert type(task).__name__ == "T2CTask"
    assert checkpoint_utils.load_checkpoint_to_cpu(ours)["extra_state"]["best"] == 0.625


def test_numpy_allow_list_admits_no_callable_beyond_reconstruction(tmp_path):
    """numpy.load / numpy.fromfile etc. stay refused: only scalar/_reconstruct/dtype/ndarray are allowed."""
    path = str(tmp_path / "np_call.pt")
    torch.save({"x": _NumpyCall()}, path)
    with pytest.raises(UnsafeCheckpointError, match="numpy"):
        load_state(path)


class _NumpyCall:
    def __reduce__(self):
        return (np.load, ("/nonexistent.npy",))


def test_truncated_empty_and_foreign_files_are_one_line_refusals(imported_init, corpus_dir, tmp_path):
    good = open(imported_init["t2c"], "rb").read()
    cases = {"truncated.pt": good[: len(good) // 2], "empty.pt": b"", "notes.pt": b"hello, not a checkpoint\n"}
    commands = [lambda p: ["xmodal-evaluate", "--checkpoint", p, "--task", "t2c", "--data", corpus_dir,
                           "--out", str(tmp_path / "e")],
                lambda p: ["xmodal-import-official", "--checkpoint", p, "--task", "t2c", "--data", corpus_dir,
                           "--out", str(tmp_path / "i.pt")],
                lambda p: ["xmodal-transfer", "--source", p, "--task", "s2c", "--data", corpus_dir,
                           "--out", str(tmp_path / "t.pt")]]
    for (name, data), command in zip(cases.items(), commands):  # each kind of bad file, each command once
        path = tmp_path / name
        path.write_bytes(data)
        assert_refused(run_cli(command(str(path)), check=False), path, "not a readable PyTorch checkpoint")
        with pytest.raises(CheckpointError, match=str(path)):
            checkpoint_utils.load_checkpoint_to_cpu(str(path))
        assert path.read_bytes() == data
    # a valid torch file that is no checkpoint (no model/cfg)
    other = tmp_path / "tensor.pt"
    torch.save({"weights": torch.zeros(2), "ns": argparse.Namespace(a=1)}, other)
    for cmd in (["xmodal-evaluate", "--checkpoint", str(other), "--task", "t2c", "--data", corpus_dir,
                 "--out", str(tmp_path / "e")],
                ["xmodal-import-official", "--checkpoint", str(other), "--task", "t2c", "--data", corpus_dir,
                 "--out", str(tmp_path / "i.pt")]):
        assert_refused(run_cli(cmd, check=False), other)
    assert not any((tmp_path / n).exists() for n in ("e", "i.pt", "t.pt"))
