"""xmodal-evaluate: zero-shot cross-modal and same-modality evaluation of real small checkpoints, SLUE metrics that
agree with sklearn, the prior system's legacy numbers, determinism, and errors that name the file."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from conftest import run_cli
from fairseq_xmodal import metrics as M
from fairseq_xmodal.evaluation.evaluate import (EvalConfig, EvaluationError, Predictions, compute_metrics, evaluate_checkpoint,
                                                load_for_evaluation, predict)
from fairseq_xmodal.transfer import TransferPlan, transfer
from conftest import t2c_from_s2c

LABELS = ["Negative", "Neutral", "Positive"]


@pytest.fixture(scope="module")
def t2c_ckpt(tmp_path_factory, corpus_dir, imported_init):
    run = t2c_from_s2c(tmp_path_factory, imported_init, corpus_dir)
    return str(run / "checkpoints" / "checkpoint_best.pt")


@pytest.fixture(scope="module")
def s2c_ckpt(t2c_ckpt, corpus_dir, tmp_path_factory):
    """An s2c checkpoint whose encoder, decoder and head were trained (on text): the trained t2c, transferred."""
    out = str(tmp_path_factory.mktemp("s2c") / "s2c_from_t2c.pt")
    transfer(TransferPlan(source=t2c_ckpt, task="s2c", data=corpus_dir, out=out))
    return out


def read_predictions(path):
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def sklearn_scores(gold, pred, legacy=False):
    kw = dict(average="macro", zero_division=1) if legacy else dict(average="macro", zero_division=0, labels=LABELS)
    p, r, f, _ = precision_recall_fscore_support(gold, pred, **kw)
    return [100 * accuracy_score(gold, pred), 100 * p, 100 * r, 100 * f]


def headline(m):
    return [m["accuracy"], m["macro_precision"], m["macro_recall"], m["macro_f1"]]


# ----------------------------------------------------------------------------------------------------------------
# Metrics (no model)


def counts_predictions(gold_counts, pred_label):
    gold = [LABELS.index(lab) for lab, n in gold_counts.items() for _ in range(n)]
    pred = [LABELS.index(pred_label)] * len(gold)
    return Predictions([str(i) for i in range(len(gold))], gold, pred, np.zeros((len(gold), 3)))


def test_all_neutral_on_dev_counts_legacy_vs_slue():
    """The prior system's Table 4.2 row for a majority predictor, and what SLUE scoring makes of it."""
    pred = counts_predictions({"Positive": 262, "Negative": 51, "Neutral": 1124}, "Neutral")
    legacy, slue = compute_metrics(pred, LABELS, legacy=True), compute_metrics(pred, LABELS)
    assert [round(v, 2) for v in headline(legacy)] == [78.22, 92.74, 33.33, 29.26]
    assert [round(v, 2) for v in headline(slue)] == [78.22, 26.07, 33.33, 29.26]
    assert legacy["metrics_mode"] == "legacy" and legacy["slue"]["macro_precision"] == slue["macro_precision"]
    gold_s = [LABELS[i] for i in pred.gold]
    assert np.allclose(headline(legacy), sklearn_scores(gold_s, ["Neutral"] * len(gold_s), legacy=True))
    assert np.allclose(headline(slue), sklearn_scores(gold_s, ["Neutral"] * len(gold_s)))
    assert slue["single_label"]["label"] == "Neutral" and "Neutral for (almost) everything" in slue["warnings"][0]
    assert slue["confusion_matrix"]["counts"][1] == [0, 1124, 0]
    assert slue["per_class"]["Neutral"]["support"] == 1124 and slue["per_class"]["Positive"]["predicted"] == 0


def test_metrics_agree_with_sklearn_on_random_predictions():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 40))
        gold = rng.integers(0, 3, n)
        pred = rng.integers(0, 3, n) if trial % 4 else np.full(n, rng.integers(0, 3))  # some single-label runs
        if trial % 5 == 0:
            gold[:] = rng.integers(0, 3)  # a label absent from gold
        predictions = Predictions([""] * n, gold.tolist(), pred.tolist(), np.zeros((n, 3)))
        m_s, m_l = compute_metrics(predictions, LABELS), compute_metrics(predictions, LABELS, legacy=True)
        g, p = [LABELS[i] for i in gold], [LABELS[i] for i in pred]
        assert np.allclose(headline(m_s), sklearn_scores(g, p)), (g, p)
        assert np.allclose(headline(m_l), sklearn_scores(g, p, legacy=True)), (g, p)
        per = precision_recall_fscore_support(g, p, labels=LABELS, zero_division=0)
        for i, lab in enumerate(LABELS):
            assert np.allclose([m_s["per_class"][lab][k] for k in ("precision", "recall", "f1")],
                               [100 * per[0][i], 100 * per[1][i], 100 * per[2][i]])
    assert M.majority_warning({"a": 94, "b": 6}) == {} and M.majority_warning({"a": 95, "b": 5})["label"] == "a"


# ----------------------------------------------------------------------------------------------------------------
# Real checkpoints


def check_outputs(out_dir, corpus_dir, split, m):
    rows = read_predictions(os.path.join(out_dir, "predictions.tsv"))
    with open(os.path.join(corpus_dir, f"{split}.id")) as f:
        ids = [line.strip() for line in f]
    with open(os.path.join(corpus_dir, f"{split}.sent")) as f:
        gold = [line.strip() for line in f]
    assert [r["id"] for r in rows] == ids and [r["gold"] for r in rows] == gold  # every row once, in order
    probs = np.array([[float(r[f"p_{lab}"]) for lab in LABELS] for r in rows])
    assert np.allclose(probs.sum(1), 1, atol=1e-5)
    assert [LABELS[i] for i in probs.argmax(1)] == [r["predicted"] for r in rows]
    pred = [r["predicted"] for r in rows]
    assert np.allclose(headline(m), sklearn_scores(gold, pred, legacy=m["metrics_mode"] == "legacy"))
    assert np.allclose(headline(m["slue"]), sklearn_scores(gold, pred))
    assert np.allclose(headline(m["legacy"]), sklearn_scores(gold, pred, legacy=True))
    with open(os.path.join(out_dir, "metrics.json")) as f:
        assert json.load(f) == json.loads(json.dumps(m))
    assert m["rows"] == len(ids) and sum(m["predicted_distribution"].values()) == len(ids)
    return rows


def test_zero_shot_both_directions(t2c_ckpt, s2c_ckpt, corpus_dir, tmp_path):
    """A text-trained checkpoint on audio (API), a speech checkpoint on transcripts (console script)."""
    m = evaluate_checkpoint(EvalConfig(checkpoint=t2c_ckpt, task="s2c", data=corpus_dir, split="valid",
                            out_dir=str(tmp_path / "t2c_on_speech")))
    assert m["cross_modal"] and m["checkpoint"]["task"] == "t2c" and m["task"] == "s2c"
    assert m["checkpoint"]["kind"] == "trained" and m["checkpoint"]["init"] == "transfer s2c->t2c of s2c_init.pt"
    assert m["checkpoint"]["train_subset"] == "train" and 0 < m["checkpoint"]["num_updates"] <= 60  # best epoch
    check_outputs(str(tmp_path / "t2c_on_speech"), corpus_dir, "valid", m)

    out = str(tmp_path / "s2c_on_text")
    proc = run_cli(["xmodal-evaluate", "--checkpoint", s2c_ckpt, "--task", "t2c", "--data", corpus_dir,
                    "--split", "valid", "--out", out, "--legacy-metrics", "--batch-size", "5"])
    assert "s2c checkpoint on t2c valid (24 rows, legacy metrics): ACC" in proc.stdout
    with open(os.path.join(out, "metrics.json")) as f:
        m2 = json.load(f)
    assert m2["cross_modal"] and m2["checkpoint"]["kind"] == "transfer" and m2["metrics_mode"] == "legacy"
    assert headline(m2) == headline(m2["legacy"])
    rows = check_outputs(out, corpus_dir, "valid", m2)
    assert (m2["single_label"] is not None) == any(f >= 0.95 for f in m2["predicted_fraction"].values())
    # The transferred s2c model is the t2c model: on text it predicts exactly what the t2c checkpoint predicts.
    m3 = evaluate_checkpoint(EvalConfig(checkpoint=t2c_ckpt, task="t2c", data=corpus_dir, split="valid",
                             out_dir=str(tmp_path / "t2c_on_text")))
    assert not m3["cross_modal"]
    same = read_predictions(str(tmp_path / "t2c_on_text" / "predictions.tsv"))
    assert [r["predicted"] for r in same] == [r["predicted"] for r in rows]
    assert np.allclose([[float(r[f"p_{lab}"]) for lab in LABELS] for r in same],
                       [[float(r[f"p_{lab}"]) for lab in LABELS] for r in rows], atol=2e-6)


def test_deterministic_and_batching_independent_for_text(t2c_ckpt, corpus_dir):
    task, model, _ = load_for_evaluation(t2c_ckpt, "t2c", corpus_dir)
    a = predict(task, model, "valid", batch_size=8)
    b = predict(task, model, "valid", batch_size=8)
    c = predict(task, model, "valid", batch_size=1)
    d = predict(task, model, "valid", batch_size=None, max_tokens=40)
    assert np.array_equal(a.probs, b.probs)  # bit-identical run to run
    assert a.pred == c.pred == d.pred
    assert np.allclose(a.probs, c.probs, atol=1e-5) and np.allclose(a.probs, d.probs, atol=1e-5)
    assert a.gold == c.gold and sorted(a.ids) == sorted(set(a.ids)) and len(a.ids) == 24


def test_speech_is_full_length_even_on_train_split(t2c_ckpt, corpus_dir):
    """No split counts as the training split, so the s2c task never crops, even with train_crop_samples set."""
    task, model, _ = load_for_evaluation(t2c_ckpt, "s2c", corpus_dir, {"train_crop_samples": 1000})
    task.load_dataset("train")
    ds = task.dataset("train")
    assert ds.crop_samples is None and ds[0]["source"].numel() == ds.true_sizes[0] > 1000


def test_dictionary_mismatch_and_bad_inputs_name_the_file(t2c_ckpt, corpus_dir, official_tiny, tmp_path):
    data = tmp_path / "reordered"
    shutil.copytree(corpus_dir, data, ignore=shutil.ignore_patterns("audio"))
    (data / "labels.sent.txt").write_text("Positive\nNeutral\nNegative\n")
    with pytest.raises(EvaluationError) as e:
        load_for_evaluation(t2c_ckpt, "t2c", str(data))
    assert str(data / "labels.sent.txt") in str(e.value) and "silently permuted" in str(e.value)
    (data / "labels.sent.txt").write_text("Negative\nNeutral\nPositive\n")
    lines = (data / "dict.txt").read_text().splitlines(keepends=True)
    (data / "dict.txt").write_text("".join([lines[1], lines[0]] + lines[2:]))
    with pytest.raises(EvaluationError, match=str(data / "dict.txt")):
        load_for_evaluation(t2c_ckpt, "s2c", str(data))  # the text dictionary is checked for either task
    with pytest.raises(EvaluationError, match="xmodal-import-official"):
        load_for_evaluation(official_tiny, "t2c", corpus_dir)
    out = str(tmp_path / "e")
    evaluate_checkpoint(EvalConfig(checkpoint=t2c_ckpt, task="t2c", data=corpus_dir, split="valid", out_dir=out))
    with pytest.raises(EvaluationError, match="--overwrite"):
        evaluate_checkpoint(EvalConfig(checkpoint=t2c_ckpt, task="t2c", data=corpus_dir, split="valid", out_dir=out))


def test_split_without_labels_is_predicted(t2c_ckpt, corpus_dir, tmp_path):
    data = tmp_path / "blind"
    shutil.copytree(corpus_dir, data, ignore=shutil.ignore_patterns("audio"))
    for ext in ("id", "wrd"):
        shutil.copy(data / f"valid.{ext}", data / f"blind.{ext}")
    m = evaluate_checkpoint(EvalConfig(checkpoint=t2c_ckpt, task="t2c", data=str(data), split="blind",
                            out_dir=str(tmp_path / "out")))
    rows = read_predictions(str(tmp_path / "out" / "predictions.tsv"))
    assert len(rows) == 24 and all(r["gold"] == "" for r in rows) and m["accuracy"] is None
    assert sum(m["predicted_distribution"].values()) == 24


def test_summed_counts_score_like_the_offline_metrics():
    """The criterion scores summed confusion counts (fairseq logs must be summable); offline evaluation scores the
    predictions with sklearn. Both must give the same numbers, split into batches or not."""
    rng = np.random.default_rng(1)
    for trial in range(100):
        n = int(rng.integers(1, 40))
        gold, pred = rng.integers(0, 3, n), rng.integers(0, 3, n) if trial % 3 else np.zeros(n, dtype=np.int64)
        cut = int(rng.integers(0, n + 1))
        summed = M.confusion_matrix(gold[:cut], pred[:cut], 3) + M.confusion_matrix(gold[cut:], pred[cut:], 3)
        by_counts, offline = M.scores(summed, LABELS), M.slue_scores(gold, pred, LABELS)
        assert by_counts.keys() == offline.keys()
        assert np.allclose([by_counts[k] for k in offline], [offline[k] for k in offline]), (gold, pred)


def test_majority_threshold_is_a_command_line_flag(t2c_ckpt, corpus_dir, tmp_path, capsys):
    from fairseq_xmodal.cli import evaluate as cli

    common = ["--checkpoint", t2c_ckpt, "--task", "t2c", "--data", corpus_dir, "--split", "valid"]
    assert cli.main(common + ["--out", str(tmp_path / "bad"), "--majority-threshold", "1.5"]) == 2
    assert "--majority-threshold must be in (0, 1]" in capsys.readouterr().err
    # with 3 labels the most frequent prediction always takes >= 1/3 of the rows, so 0.3 must fire
    assert cli.main(common + ["--out", str(tmp_path / "low"), "--majority-threshold", "0.3"]) == 0
    with open(tmp_path / "low" / "metrics.json") as f:
        m = json.load(f)
    assert m["single_label"]["threshold"] == 0.3 and m["warnings"] == [m["single_label"]["message"]]
    assert "WARNING: " in capsys.readouterr().out
