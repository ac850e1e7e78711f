"""xmodal-transfer: round trips are bit-exact, every key is accounted for once, mismatches are errors naming the file,
and the result works with finetune_from_model and load_model_ensemble_and_task under the target task."""
import json
import os

import pytest
import torch

from conftest import dict_folder, shared_transfer, t2c_from_s2c
from fairseq_xmodal.checkpoints import build_task_and_model, load_state, make_cfg, save_checkpoint
from fairseq_xmodal.cli.transfer import main as cli_main
from fairseq_xmodal.selectors import SelectorError, parse_selector, parse_selectors
from fairseq_xmodal.transfer import TransferError, TransferPlan, assign, transfer


@pytest.fixture(scope="module")
def t2c_run(tmp_path_factory, corpus_dir, imported_init):
    """A checkpoint written by a real fairseq training (optimizer state, metrics, two optimizer_history entries)."""
    return t2c_from_s2c(tmp_path_factory, imported_init, corpus_dir)


def model_keys(path):
    return list(load_state(path)["model"])


# ----------------------------------------------------------------------------------------------------------------


def test_selector_syntax():
    assert parse_selector("encoder.layers.0,5").layers == {0, 5}
    assert parse_selector("decoder.layers.0-2,4").layers == {0, 1, 2, 4}
    sels = parse_selectors("encoder.layers.0,5,decoder,head")
    assert [s.text for s in sels] == ["encoder.layers.0,5", "decoder", "head"]
    assert parse_selector("encoder.rest").matches("encoder.layer_norm.weight")
    assert not parse_selector("encoder.rest").matches("encoder.layers.0.fc1.weight")
    assert parse_selector("encoder.layers").matches("encoder.layers.1.fc1.weight")
    assert not parse_selector("encoder.layers.1").matches("encoder.layers.10.fc1.weight")
    for bad, msg in (("encoderr", "unknown selector"), ("head.layers.1", "only encoder and decoder"),
                     ("encoder.layers=0,5", "write encoder.layers.0,5"), ("encoder.layers.a", "layer list")):
        with pytest.raises(SelectorError, match=msg):
            parse_selector(bad)
    keys = ["encoder.layers.0.fc1.weight", "encoder.layers.1.fc1.weight"]
    with pytest.raises(TransferError, match="make one of them more specific"):
        assign([(parse_selector("encoder"), "source"), (parse_selector("encoder"), "init")], keys)
    rules = [(parse_selector("encoder"), "source"), (parse_selector("encoder.layers.1"), "init")]
    got = assign(rules, keys)  # the more specific selector wins
    assert (got[keys[0]].origin, got[keys[1]].origin) == ("source", "init")
    with pytest.raises(TransferError, match="matches no key"):
        assign([(parse_selector("encoder.layers.7"), "init")], keys)
    # --modality-from keeps the target prenet by default, unless a selector already names it.
    plan = TransferPlan(source="s.pt", task="s2c", data="d", out="o.pt", modality_from="m.pt")
    assert [(sel.text, origin) for sel, origin in plan.rules()[0]] == [("speech_prenet", "modality"),
                                                                        ("all (default)", "source")]
    plan.reinit = ["speech_prenet"]
    assert [(sel.text, origin) for sel, origin in plan.rules()[0]] == [("speech_prenet", "init"),
                                                                        ("all (default)", "source")]


def test_round_trip_is_bit_identical(t2c_run, imported_init, corpus_dir, tmp_path):
    """t2c (trained by fairseq) -> s2c -> t2c, and s2c (imported) -> t2c -> s2c: every tensor bit-identical."""
    for start, mid_task, end_task in ((str(t2c_run / "checkpoints" / "checkpoint_best.pt"), "s2c", "t2c"),
                                      (imported_init["s2c"], "t2c", "s2c")):
        mid, back = str(tmp_path / f"{mid_task}.pt"), str(tmp_path / f"{mid_task}_back.pt")
        r1 = transfer(TransferPlan(source=start, task=mid_task, data=corpus_dir, out=mid))
        r2 = transfer(TransferPlan(source=mid, task=end_task, data=corpus_dir, out=back))
        a, b, c = (load_state(p) for p in (start, mid, back))
        assert list(a["model"]) == list(b["model"]) == list(c["model"])
        for k, v in a["model"].items():
            assert v.dtype == c["model"][k].dtype and torch.equal(v, b["model"][k]) and torch.equal(v, c["model"][k]), k
        assert b["cfg"]["task"]["_name"] == mid_task and c["cfg"]["task"]["_name"] == end_task
        assert b["task_state"] == c["task_state"]
        assert r1.counts["transferred"] == r2.counts["transferred"] == len(a["model"])
        assert r1.counts["dropped_source_keys"] == 0 and not r1.initialised and not r1.kept


def test_accounting_lists_every_key_once(t2c_run, imported_init, corpus_dir, tmp_path):
    src = str(t2c_run / "checkpoints" / "checkpoint_best.pt")
    out = str(tmp_path / "mixed.pt")
    plan = TransferPlan(source=src, task="s2c", data=corpus_dir, out=out, modality_from=imported_init["s2c"],
                        take=["encoder.layers.0,decoder"], keep=["speech_prenet", "encoder.rest"],
                        reinit=["head", "encoder.layers.1"], rest="modality", seed=7)
    report = transfer(plan)
    with open(out + ".transfer.json") as f:
        acc = json.load(f)
    keys = model_keys(out)
    sections = [acc["transferred"], acc["kept"], acc["initialised"]]
    listed = [k for s in sections for k in s]
    assert sorted(listed) == sorted(keys) and len(listed) == len(set(listed))  # every key exactly once
    assert acc["counts"] == {"target_keys": len(keys), "transferred": len(acc["transferred"]),
                             "kept": len(acc["kept"]), "initialised": len(acc["initialised"]),
                             "dropped_source_keys": len(acc["dropped_source_keys"])}
    assert all(k.startswith(("encoder.layers.0.", "decoder.")) for k in acc["transferred"])
    encoder_rest = ("encoder.layer_norm.weight", "encoder.layer_norm.bias", "encoder.pos_emb.pe_k.weight")
    prenets = ("speech_encoder_prenet.", "text_encoder_prenet.")
    assert set(acc["kept"]) == {k for k in keys if k.startswith(prenets) or k in encoder_rest}
    assert acc["kept"]["text_encoder_prenet.encoder_prenet.0.weight"] == "--rest modality"
    assert acc["initialised"]["speaker_decoder_postnet.output_projection.weight"] == "head"
    assert acc["plan"]["seed"] == 7 and acc["plan"]["init"] == "model"
    # Source keys not transferred are listed as dropped, with the reason.
    src_keys = model_keys(src)
    assert sorted(acc["dropped_source_keys"]) == sorted(set(src_keys) - set(acc["transferred"]))
    assert "replaced: init by 'head'" in acc["dropped_source_keys"]["speaker_decoder_postnet.output_projection.weight"]
    # Tensors really come from where the report says; re-initialisation is seeded.
    got, s, m = load_state(out)["model"], load_state(src)["model"], load_state(imported_init["s2c"])["model"]
    assert all(torch.equal(got[k], s[k]) for k in acc["transferred"])
    assert all(torch.equal(got[k], m[k]) for k in acc["kept"])
    head = "speaker_decoder_postnet.output_projection.weight"
    assert not torch.equal(got[head], s[head])
    transfer(TransferPlan(**{**plan.__dict__, "out": str(tmp_path / "again.pt")}))
    assert torch.equal(load_state(str(tmp_path / "again.pt"))["model"][head], got[head])
    assert report.to_dict()["counts"] == acc["counts"]
    # With --take, keys no selector names need an explicit --rest.
    with pytest.raises(TransferError, match="--rest source"):
        transfer(TransferPlan(source=src, task="s2c", data=corpus_dir, out=str(tmp_path / "x.pt"),
                              take=["encoder", "decoder"]))


@pytest.mark.parametrize("case", ["class_size", "class_order", "text_order", "text_size"])
def test_dictionary_mismatch_names_the_file(case, t2c_run, corpus_dir, tmp_path):
    src = str(t2c_run / "checkpoints" / "checkpoint_best.pt")
    edits = {
        "class_size": dict(labels=["Negative", "Neutral", "Positive", "Mixed"]),
        "class_order": dict(labels=["Positive", "Neutral", "Negative"]),
        "text_order": dict(edit_dict=lambda lines: [lines[1], lines[0]] + lines[2:]),
        "text_size": dict(edit_dict=lambda lines: lines + ["zzz 1\n"]),
    }[case]
    data = dict_folder(tmp_path / "data", corpus_dir, **edits)
    bad_file = os.path.join(data, "labels.sent.txt" if case.startswith("class") else "dict.txt")
    with pytest.raises(TransferError) as e:
        transfer(TransferPlan(source=src, task="s2c", data=data, out=str(tmp_path / "o.pt")))
    msg = str(e.value)
    assert bad_file in msg and src in msg, msg
    assert ("--reinit head" if case.startswith("class") else "--reinit text_prenet") in msg
    if case == "class_order":
        assert "silently permuted" in msg
    assert not os.path.exists(tmp_path / "o.pt")
    # The named re-initialisation makes it an explicit, recorded choice.
    group = "head" if case.startswith("class") else "text_prenet"
    r = transfer(TransferPlan(source=src, task="s2c", data=data, out=str(tmp_path / "o.pt"), reinit=[group], seed=3))
    assert r.initialised and all(v == group for v in r.initialised.values())
    assert "re-initialised: not checked" in r.checks["class_dictionary" if group == "head" else "text_dictionary"]


def test_shape_mismatch_and_wrong_inputs_name_the_file(t2c_run, corpus_dir, official_tiny, tmp_path):
    src = str(t2c_run / "checkpoints" / "checkpoint_best.pt")
    # A real fairseq_xmodal checkpoint of another architecture as the modality checkpoint.
    other = str(tmp_path / "wide.pt")
    cfg = make_cfg({"_name": "t2c", "data": corpus_dir}, {"_name": "speecht5_tiny", "encoder_ffn_embed_dim": 96})
    task, model = build_task_and_model(cfg)
    save_checkpoint(other, cfg, model.state_dict(), task.state.state_dict)
    with pytest.raises(TransferError) as e:
        transfer(TransferPlan(source=src, task="s2c", data=corpus_dir, out=str(tmp_path / "o.pt"),
                              modality_from=other, keep=["encoder"]))
    assert other in str(e.value) and "(96, 64)" in str(e.value) and "encoder.layers.0.fc1.weight" in str(e.value)
    with pytest.raises(TransferError, match="xmodal-import-official"):
        transfer(TransferPlan(source=official_tiny, task="s2c", data=corpus_dir, out=str(tmp_path / "o.pt")))
    with pytest.raises(TransferError, match="--keep needs --modality-from"):
        transfer(TransferPlan(source=src, task="s2c", data=corpus_dir, out=str(tmp_path / "o.pt"), keep=["head"]))
    with pytest.raises(TransferError, match="overwrite an input"):
        transfer(TransferPlan(source=src, task="s2c", data=corpus_dir, out=src, overwrite=True))


def test_official_checkpoint_as_modality(t2c_run, imported_init, official_tiny, corpus_dir, tmp_path):
    """--modality-from an official SpeechT5 file: imported on the fly; its (missing) head can not be kept."""
    src = str(t2c_run / "checkpoints" / "checkpoint_best.pt")
    out = str(tmp_path / "s2c.pt")
    r = transfer(TransferPlan(source=src, task="s2c", data=corpus_dir, out=out, modality_from=official_tiny))
    assert r.plan["notes"] and set(map(lambda k: k.split(".")[0], r.kept)) == {"speech_encoder_prenet"}
    got, ref = load_state(out)["model"], load_state(imported_init["s2c"])["model"]
    assert all(torch.equal(got[k], ref[k]) for k in r.kept)
    assert r.modality["official_import"]["kind"] == "pretrain"
    with pytest.raises(TransferError, match="newly initialised by the official import"):
        transfer(TransferPlan(source=src, task="s2c", data=corpus_dir, out=str(tmp_path / "h.pt"),
                              modality_from=official_tiny, keep=["head"]))


def test_cli_finetune_and_load_ensemble(tmp_path_factory, t2c_run, imported_init, corpus_dir, tmp_path, capsys):
    """The transferred checkpoint trains with checkpoint.finetune_from_model and loads with
    load_model_ensemble_and_task under the target task; the CLI reports, and fails with exit code 2 (in-process:
    xmodal-evaluate and xmodal-report run as console scripts elsewhere)."""
    from fairseq import checkpoint_utils

    from fairseq_xmodal.tasks.s2c import S2CTask
    from fairseq_xmodal.tasks.t2c import T2CTask

    out = str(tmp_path / "s2c_from_t2c.pt")
    assert cli_main(["--source", str(t2c_run / "checkpoints" / "checkpoint_best.pt"), "--task", "s2c",
                     "--data", corpus_dir, "--out", out, "--reinit", "head", "--seed", "5"]) == 0
    assert "initialised     1 keys" in capsys.readouterr().out and os.path.isfile(out + ".transfer.json")
    assert cli_main(["--source", out, "--task", "t2c", "--data", corpus_dir, "--out", str(tmp_path / "y.pt"),
                     "--take", "encoder"]) == 2
    assert "--rest" in capsys.readouterr().err
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([out])
    assert isinstance(task, S2CTask) and cfg.task._name == "s2c"
    sd = load_state(out)["model"]
    assert all(torch.equal(v, sd[k]) for k, v in models[0].state_dict().items())

    t2c_ckpt = shared_transfer(tmp_path_factory, imported_init, corpus_dir)
    _, _, task = checkpoint_utils.load_model_ensemble_and_task([t2c_ckpt])
    assert isinstance(task, T2CTask)
    run = t2c_from_s2c(tmp_path_factory, imported_init, corpus_dir)  # trained from t2c_ckpt
    log = (run / "hydra_train.log").read_text()
    assert f"loading pretrained model from {t2c_ckpt}" in log and "num_updates 60" in log
    assert (run / "checkpoints" / "checkpoint_best.pt").exists()
