"""xmodal-probe: a linear probe on pooled features of real (tiny) checkpoints beats chance on the learnable corpus,
reports reference, fine-tuned and delta in probe.json, is deterministic, and refuses data whose dictionaries differ
from the checkpoint's."""
import json
import os

import numpy as np
import pytest
import torch

from conftest import BIN, dict_folder, hydra_train
from fairseq_xmodal.cli.probe import main as cli_main
from fairseq_xmodal.evaluation.probe import (ProbeConfig, ProbeError, extract_features, holdout_split,
                                             load_probed_model, probe)
from fairseq_xmodal.models.heads import masked_mean


@pytest.fixture(scope="module")
def t2c_last(tmp_path_factory, corpus_dir, imported_init):
    """A real fairseq-hydra-train t2c run: 60 updates from the imported init (the run test_transfer.py shares too)."""
    run = tmp_path_factory.getbasetemp() / "shared_runs" / "t2c_speecht5"
    if not (run / "checkpoints" / "checkpoint_last.pt").exists():
        run.parent.mkdir(exist_ok=True)
        hydra_train("t2c_demo", str(run), f"task.data={corpus_dir}", "optimization.max_update=60",
                    f"checkpoint.finetune_from_model={imported_init['t2c']}")
    return str(run / "checkpoints" / "checkpoint_last.pt")


def summary(r):
    """The numbers, for the test log (-rA)."""
    ref = f"{r['reference']['macro_f1']:.2f}" if r["reference"] else "-"
    return (f"{r['modality']} {r['features']} n_train={r['n_train']} n_eval={r['n_eval']}: macro-F1 reference {ref} "
            f"checkpoint {r['checkpoint']['macro_f1']:.2f} majority {r['baselines']['majority']['macro_f1']:.2f} "
            f"uniform {r['baselines']['uniform_random']['macro_f1']:.2f}")


# ----------------------------------------------------------------------------------------------------------------


def test_finetuned_t2c_probed_on_text_and_speech(t2c_last, imported_init, corpus_dir, tmp_path, capsys):
    assert os.path.isfile(os.path.join(BIN, "xmodal-probe"))
    numbers = []
    for modality, reference in (("text", imported_init["t2c"]), ("speech", imported_init["s2c"])):
        out = tmp_path / modality
        assert cli_main(["--checkpoint", t2c_last, "--reference", reference, "--modality", modality,
                         "--data", corpus_dir, "--out", str(out)]) == 0
        table = capsys.readouterr().out
        assert "delta (checkpoint - reference)" in table and "majority (Negative)" in table, table
        with open(out / "probe.json") as f:
            r = json.load(f)
        numbers.append(summary(r))
        assert (r["modality"], r["task"], r["features"], r["seed"]) == (modality, {"text": "t2c", "speech": "s2c"}[modality],
                                                                         "encoder_mean", 1)
        assert r["splits"] == {"train": "train", "eval": "valid", "holdout": None}
        assert (r["n_train"], r["n_eval"]) == (60, 24)
        assert r["checkpoint"]["info"]["num_updates"] == 60 and r["checkpoint"]["info"]["task"] == "t2c"
        assert r["reference"]["path"] == os.path.abspath(reference)
        chance = max(r["baselines"]["majority"]["macro_f1"], r["baselines"]["uniform_random"]["macro_f1"])
        assert chance == pytest.approx(100 / 3)
        for role in ("reference", "checkpoint"):
            m = r[role]
            assert m["macro_f1"] > chance + 30, (role, m["macro_f1"])
            assert set(m["per_class_recall"]) == {"Negative", "Neutral", "Positive"}
            assert sum(map(sum, m["confusion_matrix"]["counts"])) == 24
            assert m["probe_fit"]["converged"] and m["probe_fit"]["feature_dim"] == 64
        assert r["delta"]["macro_f1"] == pytest.approx(r["checkpoint"]["macro_f1"] - r["reference"]["macro_f1"])
        assert r["delta"]["accuracy"] == pytest.approx(r["checkpoint"]["accuracy"] - r["reference"]["accuracy"])
    # an existing probe.json is never silently replaced
    assert cli_main(["--checkpoint", t2c_last, "--modality", "text", "--data", corpus_dir,
                     "--out", str(tmp_path / "text")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    print("\n".join(numbers))


def test_imported_init_decoder_features_and_official_reference(imported_init, official_tiny, corpus_dir, tmp_path):
    """The imported init itself, probed through its decoder output, against the official checkpoint it came from
    (imported on the fly): the same weights, so exactly the same probe result."""
    r = probe(ProbeConfig(checkpoint=imported_init["s2c"], reference=official_tiny, modality="speech",
                          data=corpus_dir, out_dir=str(tmp_path), features="decoder"))
    print(summary(r))
    assert r["reference"]["info"]["kind"] == "official" and r["reference"]["info"]["imported_on_the_fly"]
    assert r["checkpoint"]["macro_f1"] > 100 / 3 + 30
    assert r["delta"]["macro_f1"] == 0.0 and r["reference"]["confusion_matrix"] == r["checkpoint"]["confusion_matrix"]
    with open(tmp_path / "probe.json") as f:
        assert json.load(f)["checkpoint"]["macro_f1"] == r["checkpoint"]["macro_f1"]


def test_deterministic_and_seeded_holdout(imported_init, corpus_dir, tmp_path):
    task, model, _ = load_probed_model(imported_init["t2c"], "s2c", corpus_dir, None, "encoder_mean", str(tmp_path))
    a, b = (extract_features(task, model, "valid", batch_size=8) for _ in range(2))
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    # text features do not depend on batching: the masked mean ignores padded tokens exactly
    task, model, _ = load_probed_model(imported_init["t2c"], "t2c", corpus_dir, None, "encoder_mean", str(tmp_path))
    batched, single = (extract_features(task, model, "valid", batch_size=n) for n in (8, 1))
    np.testing.assert_allclose(batched.x, single.x, atol=1e-5)

    def run(seed, name):
        return probe(ProbeConfig(checkpoint=imported_init["t2c"], modality="speech", data=corpus_dir, holdout=0.9,
                                 seed=seed, out_dir=str(tmp_path / name), class_weight="balanced"))

    r1, r2, r3 = run(1, "a"), run(1, "b"), run(2, "c")
    print(summary(r1), summary(r3), sep="\n")
    assert (r1["n_train"], r1["n_eval"]) == (6, 54) and r1["eval_distribution"] == {lab: 18 for lab in r1["labels"]}
    assert r1["splits"] == {"train": "train", "eval": "train", "holdout": 0.9}
    assert r1["checkpoint"] == r2["checkpoint"] and r1["eval_ids"] == r2["eval_ids"]  # same seed: identical
    assert r1["eval_ids"] != r3["eval_ids"]  # another seed: another holdout


def test_holdout_split_and_config_errors(corpus_dir, tmp_path):
    y = np.array([0] * 10 + [1] * 5 + [2] * 1)
    tr, ev = holdout_split(y, 0.3, seed=3)
    assert sorted(tr.tolist() + ev.tolist()) == list(range(16))
    assert np.bincount(y[ev], minlength=3).tolist() == [3, 2, 0]  # stratified; a single row stays in train
    assert np.array_equal(holdout_split(y, 0.3, seed=3)[1], ev)
    x = torch.arange(12.0).view(1, 4, 3)
    mean, n = masked_mean(x, torch.tensor([[False, False, True, True]]))
    assert torch.equal(mean, torch.tensor([[1.5, 2.5, 3.5]])) and n.tolist() == [2.0]
    for kw, msg in ((dict(holdout=0.3, eval_split="valid"), "do not also give"), (dict(eval_split="train"), "own"),
                    (dict(holdout=1.0), "strictly between"), (dict(modality="image"), "modality")):
        with pytest.raises(ProbeError, match=msg):
            probe(ProbeConfig(**{"checkpoint": "x.pt", "modality": "text", "data": corpus_dir,
                                 "out_dir": str(tmp_path), **kw}))


def test_dictionary_mismatch_is_an_error_naming_the_file(imported_init, corpus_dir, tmp_path, capsys):
    permuted = dict_folder(tmp_path / "permuted", corpus_dir, labels=["Positive", "Neutral", "Negative"])
    with pytest.raises(ValueError, match="class dictionary mismatch") as e:
        probe(ProbeConfig(checkpoint=imported_init["t2c"], modality="text", data=permuted, out_dir=str(tmp_path / "o")))
    assert os.path.join(permuted, "labels.sent.txt") in str(e.value)
    short = dict_folder(tmp_path / "short", corpus_dir, edit_dict=lambda lines: lines[:10] + lines[11:])
    assert cli_main(["--checkpoint", imported_init["t2c"], "--reference", imported_init["s2c"], "--modality", "speech",
                     "--data", short, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "text dictionary mismatch" in err and os.path.join(short, "dict.txt") in err, err
    assert not os.path.exists(tmp_path / "o" / "probe.json")
