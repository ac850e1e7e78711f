"""xmodal_mona (docs/methods/mona.md): paired rows, the Wang & Isola terms, the gradient through the simulated body
update (against finite differences of an explicit two-step computation), lambda=0 == xmodal_classification, and a
real fairseq-hydra-train run."""
import copy
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fairseq import checkpoint_utils

from conftest import hydra_train, tiny_model
from fairseq_xmodal.criterions.classification import ClassificationCriterion
from fairseq_xmodal.criterions.mona import MonaCriterion, MonaCriterionConfig, alignment, uniformity
from fairseq_xmodal.data.paired_dataset import PairedDataset
from fairseq_xmodal.models import modules
from fairseq_xmodal.tasks.s2c import S2CConfig, S2CTask
from fairseq_xmodal.tasks.t2c import T2CConfig, T2CTask


@pytest.fixture(scope="module")
def t2c_paired(corpus_dir):
    task = T2CTask.setup_task(T2CConfig(data=corpus_dir, train_subset="train", seed=1, paired_source_modality=True))
    task.load_dataset("train")
    task.load_dataset("valid")
    return task


def mona(task, **cfg):
    return MonaCriterion(task, MonaCriterionConfig(**cfg))


def paired_batch(task, rows=range(6), dtype=torch.float32):
    ds = task.datasets["train"]
    sample = ds.collater([ds[i] for i in rows])
    sample["other_modality_net_input"]["source"] = sample["other_modality_net_input"]["source"].to(dtype)
    return sample


def test_paired_dataset_yields_the_same_rows_in_both_modalities(corpus_dir, t2c_paired):
    train = t2c_paired.datasets["train"]
    assert isinstance(train, PairedDataset) and not isinstance(t2c_paired.datasets["valid"], PairedDataset)
    s2c = S2CTask.setup_task(S2CConfig(data=corpus_dir, train_subset="train", seed=1))
    s2c.load_dataset("train")
    speech = s2c.datasets["train"]
    assert list(train.ids) == list(speech.ids) and list(train.labels) == list(speech.labels)
    assert np.array_equal(train.sizes, train.dataset.sizes)  # batching is the text task's own

    def epoch():
        itr = t2c_paired.get_batch_iterator(train, max_sentences=8, required_batch_size_multiple=1, seed=1, epoch=1,
                                            disable_iterator_cache=True)
        return list(itr.next_epoch_itr(shuffle=True))

    batches, again = epoch(), epoch()
    seen = []
    for batch, same in zip(batches, again):
        assert torch.equal(batch["id"], same["id"])  # deterministic
        assert torch.equal(batch["other_modality_net_input"]["source"], same["other_modality_net_input"]["source"])
        assert torch.equal(batch["other_modality_target"], batch["target"])
        src, pad = batch["other_modality_net_input"]["source"], batch["other_modality_net_input"]["padding_mask"]
        for row, i in enumerate(batch["id"].tolist()):
            wav = torch.from_numpy(speech.load_audio(i))
            n = int((~pad[row]).sum())
            assert n == len(wav) and torch.equal(src[row, :n], wav)  # the same utterance's full audio
            tokens = train.dataset.tokens[i]
            assert torch.equal(batch["net_input"]["src_tokens"][row, : len(tokens)], tokens)
            assert batch["target"][row] == speech.labels[i]
            seen.append(i)
    assert sorted(seen) == list(range(len(train)))

    # s2c pairs with the transcripts the same way
    s2c_paired = S2CTask.setup_task(S2CConfig(data=corpus_dir, train_subset="train", seed=1,
                                              paired_source_modality=True))
    s2c_paired.load_dataset("train")
    ds = s2c_paired.datasets["train"]
    batch = ds.collater([ds[i] for i in (5, 2)])
    assert torch.equal(batch["other_modality_net_input"]["src_tokens"][1, : len(train.dataset.tokens[2])],
                       train.dataset.tokens[2])
    with pytest.raises(ValueError, match="rows"):
        PairedDataset(train.dataset, torch.utils.data.Subset(speech, range(3)), "train")


def test_alignment_and_uniformity_known_values():
    feats = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, -1.0]])  # normalised: e1, e1, e2, -e2
    z = F.normalize(feats, dim=-1)
    align, pairs = alignment(z, torch.tensor([0, 0, 1, 1]))
    assert pairs == 2 and align.item() == pytest.approx((0.0 + 4.0) / 2)  # same-class pairs at distance^2 0 and 4
    # all 6 pairs: one at 0, four at 2 (orthogonal), one at 4 (opposite)
    for t in (2.0, 1.0):
        expected = math.log((1 + 4 * math.exp(-2 * t) + math.exp(-4 * t)) / 6)
        assert uniformity(z, t).item() == pytest.approx(expected, rel=1e-6)
    align, pairs = alignment(z, torch.tensor([0, 1, 2, 3]))
    assert pairs == 0 and align.item() == 0.0
    assert uniformity(z[:1]).item() == 0.0
    # identical rows: finite gradients (no sqrt at 0)
    same = torch.ones(3, 4, requires_grad=True)
    (alignment(F.normalize(same, dim=-1), torch.zeros(3))[0] + uniformity(F.normalize(same, dim=-1))).backward()
    assert torch.isfinite(same.grad).all()


def explicit_two_step(model, task, sample, alpha, t):
    """The definition, done literally on a copy: one SGD step of the encoder on the mean target CE, then the speech
    features of the same rows through the stepped encoder, then align + unif."""
    m = copy.deepcopy(model)
    loss, n, _ = ClassificationCriterion(task)(m, sample)
    body = [p for name, p in m.named_parameters() if name.startswith("encoder.")]
    grads = torch.autograd.grad(loss / n, body)
    with torch.no_grad():
        for p, g in zip(body, grads):
            p -= alpha * g
        x, pad = m.speech_encoder_prenet(sample["other_modality_net_input"]["source"], sample["other_modality_net_input"]["padding_mask"])
        enc = m.encoder(x, pad)
        keep = (~pad).unsqueeze(-1).to(enc.dtype)
        z = F.normalize((enc * keep).sum(1) / keep.sum(1), dim=-1)
        return alignment(z, sample["target"])[0] + uniformity(z, t)


def test_simulated_update_gradient_reaches_the_text_prenet_and_matches_finite_differences(t2c_paired, monkeypatch):
    # float64 end to end, so central differences are accurate to ~1e-9: GELU without its fp32 round trip, and the
    # criterion's `logits.float()` (fp32 CE) kept in float64 (fp32 rounding of the inner gradient would otherwise
    # put ~3% noise on a difference quotient of this size)
    monkeypatch.setattr(modules, "gelu_fp32", F.gelu)
    to_fp32 = torch.Tensor.float
    monkeypatch.setattr(torch.Tensor, "float", lambda t: t if t.dtype == torch.float64 else to_fp32(t))
    model = tiny_model(t2c_paired).double()
    sample = paired_batch(t2c_paired, dtype=torch.float64)
    alpha = 0.5
    crit = mona(t2c_paired, mona_inner_lr=alpha)
    task_loss, n, _, align, unif, pairs = crit.mona_terms(model, sample)
    assert n == 6 and pairs == 3  # rows 0-5: labels 0,1,2,0,1,2
    prenet = list(model.text_encoder_prenet.parameters())
    grad = torch.autograd.grad(align + unif, prenet, retain_graph=True)
    assert grad[0].abs().sum() > 0  # the term alone moves the text embeddings ...
    assert torch.autograd.grad(align, prenet[0])[0].abs().sum() > 0
    # ... only through theta' (the speech features never touch the text prenet otherwise)
    _, _, _, align0, unif0, _ = mona(t2c_paired, mona_inner_lr=0.0).mona_terms(model, sample)
    assert all(g.abs().sum() == 0 for g in torch.autograd.grad(align0 + unif0, prenet, allow_unused=True)
               if g is not None)

    value = explicit_two_step(model, t2c_paired, sample, alpha, 2.0)
    assert (align + unif).item() == pytest.approx(value.item(), rel=1e-9, abs=1e-12)

    gen = torch.Generator().manual_seed(0)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in prenet]
    analytic = sum((g * v).sum() for g, v in zip(grad, direction)).item()
    eps = 1e-5

    def shifted(sign):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for p, v in zip(m.text_encoder_prenet.parameters(), direction):
                p += sign * eps * v
        return explicit_two_step(m, t2c_paired, sample, alpha, 2.0).item()

    numeric = (shifted(1) - shifted(-1)) / (2 * eps)
    assert abs(analytic) > 1e-6
    assert analytic == pytest.approx(numeric, rel=1e-6)


def test_lambda_zero_is_the_plain_criterion_and_the_term_is_added_on_top(t2c_paired):
    model = tiny_model(t2c_paired, seed=1)
    sample = paired_batch(t2c_paired, rows=range(8))
    plain = ClassificationCriterion(t2c_paired)

    def run(crit):
        model.zero_grad()
        loss, n, log = crit(model, sample)
        loss.backward()
        return loss.detach(), n, log, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    ref = run(plain)
    for crit in (mona(t2c_paired, mona_lambda=0.0), mona(t2c_paired, mona_updates=0)):
        out = run(crit)
        assert torch.equal(out[0], ref[0]) and out[1] == ref[1]
        assert len(out[3]) == len(ref[3]) and all(torch.equal(a, b) for a, b in zip(out[3], ref[3]))
        assert {k: v for k, v in out[2].items() if k != "task_loss"} == ref[2]
        assert "mona_align" not in out[2]

    lam, w = 0.5, 0.7
    crit = mona(t2c_paired, mona_lambda=lam, mona_uniformity_weight=w, mona_updates=3)
    loss, n, log, _ = run(crit)
    assert log["task_loss"].item() == pytest.approx(ref[0].item(), rel=1e-5)  # same CE (math-kernel attention)
    assert log["mona_align"] > 0 and log["mona_unif"] < 0 and log["_mona_n"] == n == 8
    assert loss.item() == pytest.approx(log["task_loss"].item() + lam * (log["mona_align"] + w * log["mona_unif"]),
                                        rel=1e-6)
    assert all(log[k] == v for k, v in ref[2].items() if k.startswith("_cm:"))  # same predictions and counts
    # the twice-differentiable switches are undone: every attention back on its constructor default (automatic)
    attention = [m for m in model.modules() if isinstance(m, modules.MultiheadAttention)]
    assert attention and all(m.recompute is None for m in attention)
    crit.set_num_updates(3)  # past mona_updates: plain again
    assert torch.equal(run(crit)[0], ref[0])
    crit.set_num_updates(0)
    model.eval()
    with torch.no_grad():  # validation never applies the term
        assert "mona_align" not in crit(model, sample)[2]
    model.train()
    with pytest.raises(ValueError, match="paired_source_modality"):
        crit(model, {k: v for k, v in sample.items() if k != "other_modality_net_input"})


def test_with_the_body_frozen_the_term_still_trains_the_text_prenet(t2c_paired):
    """Stage 1 of an embedder warm-up: encoder and decoder frozen. theta' is built from detached copies, so the
    term still differentiates through the simulated step, and the frozen body gets no gradient."""
    model = tiny_model(t2c_paired, seed=2)
    model.set_frozen(["speech_prenet", "encoder", "decoder"])
    sample = paired_batch(t2c_paired)
    crit = mona(t2c_paired)
    _, _, _, align, unif, _ = crit.mona_terms(model, sample)
    (align + unif).backward()
    assert model.text_encoder_prenet.encoder_prenet[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for group in ("speech_encoder_prenet", "encoder", "decoder")
               for p in getattr(model, group).parameters())
    model.set_frozen(["text_prenet", "encoder"])
    with pytest.raises(ValueError, match="no body gradient"):
        crit(model, sample)


def test_hydra_train_with_mona_trains_and_logs(corpus_dir, imported_init, tmp_path):
    run = tmp_path / "mona"
    init = imported_init["t2c"]
    hydra_train("t2c_mona_demo", str(run), f"task.data={corpus_dir}", f"checkpoint.finetune_from_model={init}",
                "optimization.max_update=24", "criterion.mona_updates=16", "common.log_interval=8")
    log = (run / "hydra_train.log").read_text()
    inner = [dict(re.findall(r"(\w+)=([^,\s]+)", line)) for line in log.splitlines() if "[train_inner]" in line]
    assert [int(x["num_updates"]) for x in inner] == [8, 16, 24], log[-3000:]
    for x in inner[:2]:  # update counts 0-15: the term is on
        assert float(x["mona_align"]) > 0 and float(x["mona_unif"]) < 0
        assert float(x["loss"]) != float(x["task_loss"])
    for x in inner[2:]:  # from update 16: plain xmodal_classification (fairseq shows a meter no longer fed as None)
        assert x.get("mona_align", "None") == "None" and float(x["loss"]) == float(x["task_loss"])
    assert float(inner[-1]["task_loss"]) < float(inner[0]["task_loss"])
    assert re.search(r"\[valid\].*task_loss.*macro_f1", log)
    key = "text_encoder_prenet.encoder_prenet.0.weight"
    before = checkpoint_utils.load_checkpoint_to_cpu(init)["model"][key]
    after = checkpoint_utils.load_checkpoint_to_cpu(str(run / "checkpoints" / "checkpoint_last.pt"))["model"][key]
    assert not torch.equal(before, after)  # the target embedder trained
