"""model.feature_padding: `masked` makes every row of a zero-padded speech batch equal to the utterance alone (at any
batch size, also through xmodal-evaluate's batching), `official` keeps the official behaviour, and both agree exactly
when nothing is padded."""
import numpy as np
import pytest
import torch

from fairseq_xmodal.evaluation.evaluate import load_for_evaluation, predict
from fairseq_xmodal.models.speecht5 import SpeechT5Classifier, SpeechT5TinyConfig

LENGTHS = [8000, 12345, 16000, 5000, 9999, 6400, 15001]


def padded(wavs):
    S = max(len(w) for w in wavs)
    src, pad = torch.zeros(len(wavs), S), torch.ones(len(wavs), S, dtype=torch.bool)
    for j, w in enumerate(wavs):
        src[j, :len(w)], pad[j, :len(w)] = w, False
    return src, pad


def batch_vs_alone(model, wavs, batch_size):
    """Largest |logit(row in a padded batch) - logit(utterance alone)| over all rows."""
    with torch.no_grad():
        alone = torch.cat([model(source=w[None], padding_mask=None) for w in wavs])
        rows = [model(source=s, padding_mask=p) for s, p in
                (padded(wavs[i:i + batch_size]) for i in range(0, len(wavs), batch_size))]
    return (torch.cat(rows) - alone).abs().max().item()


@pytest.fixture(scope="module")
def wavs():
    g = torch.Generator().manual_seed(0)
    return [0.3 * torch.randn(n, generator=g) for n in LENGTHS]


def model(mode, seed=0):
    torch.manual_seed(seed)
    return SpeechT5Classifier(SpeechT5TinyConfig(feature_padding=mode), 20, 1, 3).eval()


@pytest.mark.parametrize("batch_size", [2, 3, 4, 7])
def test_masked_rows_equal_the_utterance_alone(wavs, batch_size):
    assert batch_vs_alone(model("masked"), wavs, batch_size) < 1e-5


def test_official_rows_depend_on_the_padding(wavs):
    # the official first GroupNorm takes its statistics over the zero padding: rows move with the batch
    assert batch_vs_alone(model("official"), wavs, 7) > 1e-3


def test_both_modes_identical_without_padding(wavs):
    masked, official = model("masked"), model("official")
    assert masked.state_dict().keys() == official.state_dict().keys()
    with torch.no_grad():
        src = torch.stack([w[:5000] for w in wavs])  # equal lengths: a batch without padding
        for pad in (None, torch.zeros(src.shape, dtype=torch.bool)):
            assert torch.equal(masked(source=src, padding_mask=pad), official(source=src, padding_mask=pad))


def test_masked_training_step_has_gradients_and_matches_alone(wavs):
    m = model("masked").train()
    src, pad = padded(wavs[:3])
    m(source=src, padding_mask=pad).sum().backward()
    g = m.speech_encoder_prenet.feature_extractor.conv_layers[0][2].weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_evaluate_speech_scores_do_not_depend_on_batch_size(imported_init, corpus_dir):
    """xmodal-evaluate's own batching (the default masked mode): batch 1, 3, 8 and max_tokens give the same scores."""
    task, model_, _ = load_for_evaluation(imported_init["s2c"], "s2c", corpus_dir)
    ref = predict(task, model_, "valid", batch_size=1)
    for kw in ({"batch_size": 3}, {"batch_size": 8}, {"batch_size": None, "max_tokens": 40000}):
        other = predict(task, model_, "valid", **kw)
        assert other.pred == ref.pred
        assert np.abs(other.probs - ref.probs).max() < 1e-5, kw


def test_metrics_json_records_the_feature_padding_and_batch_size_leaves_scores(imported_init, corpus_dir, tmp_path):
    """Through xmodal-evaluate: batch 1 and batch 8 give the same predictions and scores, and metrics.json says which
    padding mode computed them."""
    from fairseq_xmodal.evaluation.evaluate import EvalConfig, evaluate_checkpoint

    out = {}
    for bsz in (1, 8):
        out[bsz] = evaluate_checkpoint(EvalConfig(checkpoint=imported_init["s2c"], task="s2c", data=corpus_dir,
                                                  split="valid", out_dir=str(tmp_path / f"b{bsz}"), batch_size=bsz,
                                                  cpu=True))
        assert out[bsz]["evaluation"]["feature_padding"] == "masked" and out[bsz]["evaluation"]["batch_size"] == bsz
    for key in ("accuracy", "macro_f1", "confusion_matrix", "ci", "predicted_distribution"):
        assert out[1][key] == out[8][key], key
    preds = [(tmp_path / f"b{b}" / "predictions.tsv").read_text().splitlines() for b in (1, 8)]
    assert [r.split("\t")[:3] for r in preds[0]] == [r.split("\t")[:3] for r in preds[1]]
