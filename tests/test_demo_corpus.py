"""xmodal-make-demo-corpus: real espeak-ng speech in the SLUE-VoxCeleb layout, usable by xmodal-prepare-slue."""
import os
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from data_prep import demo_corpus as dc
from data_prep.slue_voxceleb import prepare

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng)")
SIZES = dict(n_fine_tune=48, n_dev=24, n_test=6)


def read_tsv(path):
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def files(root):
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(root) for f in fs}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    dc.make_demo_corpus(str(root / "a"), seed=3, workers=2, **SIZES)
    return root


def test_label_plan_has_slue_skew_at_default_size():
    ft = dc.label_plan(240, dc.PROPORTIONS["fine-tune"])
    dev = dc.label_plan(80, dc.PROPORTIONS["dev"])
    assert ft == {"Positive": 53, "Negative": 10, "<mixed>": 2, "Neutral": 175}
    assert dev == {"Positive": 14, "Negative": 5, "<mixed>": 1, "Disagreement": 2, "Neutral": 58}
    assert 0.70 < ft["Neutral"] / 240 < 0.78 and 0.70 < dev["Neutral"] / 80 < 0.78


def test_missing_espeak_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(dc.DemoCorpusError, match="apt-get install espeak-ng"):
        dc.make_demo_corpus(str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


@needs_espeak
def test_deterministic_for_a_seed(corpus):
    dc.make_demo_corpus(str(corpus / "b"), seed=3, workers=1, **SIZES)
    a, b = files(corpus / "a"), files(corpus / "b")
    assert len(a) == 3 + sum(SIZES.values()) and a == b  # same tsvs, same audio bytes
    dc.make_demo_corpus(str(corpus / "c"), seed=4, workers=2, **SIZES)
    c = files(corpus / "c")
    assert c["slue-voxceleb_fine-tune.tsv"] != a["slue-voxceleb_fine-tune.tsv"]
    with pytest.raises(dc.DemoCorpusError, match="already exists"):
        dc.make_demo_corpus(str(corpus / "c"), seed=4, **SIZES)


@needs_espeak
def test_layout_labels_and_segments(corpus):
    root = corpus / "a"
    ft = read_tsv(root / "slue-voxceleb_fine-tune.tsv")
    dev = read_tsv(root / "slue-voxceleb_dev.tsv")
    test = read_tsv(root / "slue-voxceleb_test_blind.tsv")
    labelled = ["id", "normalized_text", "speaker_id", "split", "sentiment", "start_second", "end_second"]
    assert list(ft.columns) == labelled and list(dev.columns) == labelled
    assert list(test.columns) == ["id", "speaker_id", "split", "start_second", "end_second"]
    assert Counter(ft.sentiment) == dc.label_plan(48, dc.PROPORTIONS["fine-tune"])
    assert Counter(dev.sentiment) == dc.label_plan(24, dc.PROPORTIONS["dev"])
    assert {"<mixed>", "Disagreement"} <= set(dev.sentiment) and "<mixed>" in set(ft.sentiment)
    assert (ft.normalized_text == ft.normalized_text.str.lower()).all()
    assert len(set(ft.id) | set(dev.id) | set(test.id)) == sum(SIZES.values())
    assert len(set(ft.speaker_id)) > 3
    for split, df in (("fine-tune", ft), ("dev", dev), ("test", test)):
        for r in df.itertuples():
            x, sr = sf.read(str(root / f"{split}_raw" / f"{r.id}.flac"), dtype="float32")
            assert sr == 16000 and x.ndim == 1
            start, end = float(r.start_second), float(r.end_second)
            a, b = int(start * sr), int(end * sr)
            assert 0.2 <= start <= 0.8 and 0.2 - 0.01 <= len(x) / sr - end <= 0.8 + 0.01  # speech inside the clip
            assert 1.0 <= end - start <= 4.0
            speech, pads = np.abs(x[a:b]).max(), max(np.abs(x[:a]).max(), np.abs(x[b:]).max())
            assert speech > 0.2 and pads < 0.03  # the pads hold only low noise


@needs_espeak
def test_prepare_runs_on_the_demo_corpus(corpus, tmp_path):
    from fairseq_xmodal.text_vocab import make_char_vocab

    spm_model, dict_txt = make_char_vocab(str(tmp_path / "vocab"))
    report = prepare(str(corpus / "a"), str(tmp_path / "data"), spm_model, dict_txt, valid_from_fine_tune=0.2,
                     balance_methods=["dup_floor"], few_shot_ks=[1], workers=2, log=lambda s: None)
    plan = dc.label_plan(48, dc.PROPORTIONS["fine-tune"])
    assert report["dropped"]["fine-tune"] == {"<mixed>": plan["<mixed>"]}
    assert report["splits"]["train"]["rows"] + report["splits"]["valid"]["rows"] == 48 - plan["<mixed>"]
    assert report["splits"]["test"]["rows"] == 6 and not report["unknown_chars"]["fine-tune"]
    assert not os.path.exists(tmp_path / "data" / "test.sent")


def test_prosody_option_shifts_pitch_and_rate_by_label_and_is_off_by_default():
    plan = lambda prosody: dc._plan_split("fine-tune", 400, 0, np.random.default_rng(5), prosody)  # noqa: E731
    base, off, on = plan(0.0), dc._plan_split("fine-tune", 400, 0, np.random.default_rng(5)), plan(2.0)
    assert base == off  # default: the earlier corpus, byte for byte
    for b, r in zip(base, on):
        assert b["sentiment"] == r["sentiment"] and b["normalized_text"] == r["normalized_text"]
        d_pitch, d_rate = (2.0 * x for x in dc.PROSODY[b["sentiment"]])
        assert r["rate"] - b["rate"] == round(d_rate)
        assert r["pitch"] == int(np.clip(b["pitch"] + round(d_pitch), 0, 99)) or b["pitch"] in (0, 99)
    mean_rate = {lab: np.mean([r["rate"] for r in on if r["sentiment"] == lab]) for lab in ("Positive", "Negative")}
    assert mean_rate["Positive"] > mean_rate["Negative"] + 50
