"""Official-format checkpoints: exact layout, strict import, SID head mapping, and loads that cannot run code."""
import argparse
import fractions
import os
import pickle

import pytest
import torch
from fairseq import checkpoint_utils

from conftest import run_cli
from fairseq_xmodal.checkpoints import load_state
from fairseq_xmodal.models.official import SID_HEAD, import_official, write_official_checkpoint
from fairseq_xmodal.models.speecht5 import SpeechT5TinyConfig
from fairseq_xmodal import safe_load
from fairseq_xmodal.safe_load import UnsafeCheckpointError, safe_torch_load

SPEC_KEYS = os.path.join(os.path.dirname(__file__), "data", "speecht5_pretrain_keys.tsv")


def test_base_checkpoint_has_the_exact_official_layout_and_imports_strictly(tmp_path, corpus_dir):
    out = tmp_path / "official"
    run_cli(["xmodal-make-official-checkpoint", "--out", str(out), "--size", "base"])
    state = load_state(str(out / "speecht5_base.pt"))
    assert set(state) >= {"args", "cfg", "model", "optimizer_history", "extra_state", "last_optimizer_state"}
    assert isinstance(state["cfg"]["model"], argparse.Namespace) and isinstance(state["cfg"]["task"], argparse.Namespace)
    with open(SPEC_KEYS) as f:
        spec = {k: (shape, dtype) for k, shape, dtype in (line.rstrip("\n").split("\t") for line in f)}
    ours = {k: (str(list(v.shape)), str(v.dtype)) for k, v in state["model"].items()}
    assert ours == spec  # 464 keys, every shape and dtype
    sd = state["model"]
    emb = sd["text_encoder_prenet.encoder_prenet.0.weight"]
    assert sd["text_decoder_prenet.embed_tokens.weight"].data_ptr() == emb.data_ptr()  # tied, as in the official file
    with open(out / "dict.txt") as f:
        assert len(f.readlines()) == 75

    report = import_official(str(out / "speecht5_base.pt"), "t2c", corpus_dir, str(tmp_path / "t2c.pt"))
    assert report["newly_initialised"] == [SID_HEAD]
    assert len(report["loaded"]) + len(report["ignored"]) == 464
    imported = load_state(str(tmp_path / "t2c.pt"))["model"]
    for key in report["loaded"]:
        assert torch.equal(imported[key], sd[key]), key


def test_tiny_import_report_and_fairseq_loading(official_tiny, corpus_dir, tmp_path):
    out = str(tmp_path / "s2c_init.pt")
    proc = run_cli(["xmodal-import-official", "--checkpoint", official_tiny, "--task", "s2c", "--data", corpus_dir,
                    "--out", out])
    assert "loaded:" in proc.stdout and "ignored" in proc.stdout and "newly_initialised: 1" in proc.stdout
    report = __import__("json").load(open(out + ".import.json"))
    reasons = set(report["ignored"].values())
    assert any("HuBERT" in r for r in reasons) and any("CTC" in r for r in reasons)
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([out])
    assert type(task).__name__ == "S2CTask" and cfg.model._name == "speecht5"
    official = safe_torch_load(official_tiny)["model"]
    ours = models[0].state_dict()
    assert all(torch.equal(ours[k], official[k]) for k in report["loaded"])


def _tamper(official_tiny, tmp_path, edit):
    state = load_state(official_tiny)
    edit(state["model"])
    path = str(tmp_path / "tampered.pt")
    torch.save(state, path)
    return path


def test_unexpected_key_is_an_error_naming_it(official_tiny, corpus_dir, tmp_path):
    path = _tamper(official_tiny, tmp_path, lambda sd: sd.__setitem__("encoder.extra_adapter.weight", torch.zeros(3)))
    with pytest.raises(ValueError, match="encoder.extra_adapter.weight"):
        import_official(path, "t2c", corpus_dir, str(tmp_path / "x.pt"))
    assert not os.path.exists(tmp_path / "x.pt")


def test_shape_mismatch_is_an_error_naming_key_and_dictionary(official_tiny, corpus_dir, tmp_path):
    def shrink(sd):
        sd["text_encoder_prenet.encoder_prenet.0.weight"] = sd["text_encoder_prenet.encoder_prenet.0.weight"][:9]
    path = _tamper(official_tiny, tmp_path, shrink)
    with pytest.raises(ValueError, match=r"text_encoder_prenet.encoder_prenet.0.weight.*\n?.*dict.txt"):
        import_official(path, "t2c", corpus_dir, str(tmp_path / "x.pt"))


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_carrying_checkpoint_is_refused_and_never_executed(tmp_path, corpus_dir):
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    path = str(tmp_path / "evil.pt")
    torch.save({"model": {"w": torch.zeros(1)}, "cfg": {"evil": payload}}, path)
    with pytest.raises(UnsafeCheckpointError, match="allow-list"):
        safe_torch_load(path)
    # fairseq's own loader goes through the same door (training resume, finetune_from_model, ensembles)
    with pytest.raises(UnsafeCheckpointError):
        checkpoint_utils.load_checkpoint_to_cpu(path)
    with pytest.raises(UnsafeCheckpointError):
        import_official(path, "t2c", corpus_dir, str(tmp_path / "x.pt"))
    assert not marker.exists()


def test_unsafe_opt_out_is_explicit(tmp_path, monkeypatch):
    path = str(tmp_path / "plain.pt")
    torch.save({"x": pickle.dumps(1), "ns": argparse.Namespace(a=1)}, path)
    assert safe_torch_load(path)["ns"].a == 1  # Namespace is on the allow-list
    monkeypatch.setattr(safe_load, "_full_pickle", {"allowed": False})
    safe_load.allow_full_pickle()  # what --allow-pickle does
    assert safe_torch_load(path)["ns"].a == 1
    outside = str(tmp_path / "fraction.pt")  # fractions.Fraction is not on the allow-list
    torch.save({"c": fractions.Fraction(1, 3)}, outside)
    assert safe_torch_load(outside)["c"] == fractions.Fraction(1, 3)
    safe_load.allow_full_pickle(False)
    with pytest.raises(UnsafeCheckpointError, match="--allow-pickle"):
        safe_torch_load(outside)
    monkeypatch.setenv("XMODAL_UNSAFE_TORCH_LOAD", "1")  # the former environment switch opens nothing
    with pytest.raises(UnsafeCheckpointError):
        safe_torch_load(outside)


def test_sid_checkpoint_head_rows_are_mapped_by_label_name(tmp_path, corpus_dir, official_tiny):
    # An official SID model fine-tuned with labels in another order than our class dictionary.
    sid_path = str(tmp_path / "sid.pt")
    write_official_checkpoint(sid_path, SpeechT5TinyConfig(), seed=3, sid_labels=["Positive", "Negative", "Neutral"])
    sid_dict = tmp_path / "sid_dict.txt"
    sid_dict.write_text("Positive 1\nNegative 1\nNeutral 1\n")
    with pytest.raises(ValueError, match="sid_dict"):
        import_official(sid_path, "s2c", corpus_dir, str(tmp_path / "x.pt"))
    report = import_official(sid_path, "s2c", corpus_dir, str(tmp_path / "s2c.pt"), sid_dict=str(sid_dict),
                             text_prenet_from=official_tiny)
    head = load_state(sid_path)["model"][SID_HEAD]  # rows: specials 0-3, Positive 4, Negative 5, Neutral 6, <mask>, <ctc_blank>
    ours = load_state(str(tmp_path / "s2c.pt"))["model"][SID_HEAD]  # rows: specials, Negative, Neutral, Positive, <ctc_blank>, <mask>
    assert torch.equal(ours[4], head[5]) and torch.equal(ours[5], head[6]) and torch.equal(ours[6], head[4])
    assert torch.equal(ours[7], head[8]) and torch.equal(ours[8], head[7])
    assert report["mapped_head_rows"]["Negative"] == "Negative"
    assert report["newly_initialised"] == []
