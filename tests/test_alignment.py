"""xmodal_align (docs/methods/alignment.md) and cross-modal retrieval: the loss and its gradients against a direct
formulation, a real run that resumes at the right update with its learned temperature, frozen groups bit-identical,
alignment reads only the training split, retrieval equals a brute-force computation."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import hydra_train, run_cli, tiny_model
from fairseq_xmodal.criterions.xmodal_align import AlignCriterion, AlignCriterionConfig, info_nce
from fairseq_xmodal.evaluation import retrieval
from fairseq_xmodal.tasks.s2c import S2CConfig, S2CTask


@pytest.fixture(scope="module")
def s2c_paired(corpus_dir):
    task = S2CTask.setup_task(S2CConfig(data=corpus_dir, train_subset="train", seed=1, paired_source_modality=True))
    task.load_dataset("train")
    return task


def direct_info_nce(zs, zt, tau):
    """The textbook formula, row by row: -log softmax over the other modality, both directions, halved."""
    total = 0.0
    for i in range(len(zs)):
        sims_t = torch.stack([F.cosine_similarity(zs[i], zt[j], dim=0) for j in range(len(zt))]) / tau
        sims_s = torch.stack([F.cosine_similarity(zt[i], zs[j], dim=0) for j in range(len(zs))]) / tau
        total = total + 0.5 * (-(sims_t[i] - torch.logsumexp(sims_t, 0)) - (sims_s[i] - torch.logsumexp(sims_s, 0)))
    return total


def test_info_nce_and_its_gradients_equal_the_direct_formulation():
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    tau = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    ours, _ = info_nce(zs.double(), zt.double(), tau)
    ref = direct_info_nce(zs, zt, tau)
    assert torch.allclose(ours.double(), ref, atol=1e-5)
    g_ours = torch.autograd.grad(ours, [zs, zt, tau])
    g_ref = torch.autograd.grad(ref, [zs, zt, tau])
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a.double(), b, atol=1e-5)
    # matched pairs far apart from the rest: loss near 0, every speech row retrieves its own text
    eye = torch.eye(4, dtype=torch.float64)
    loss, correct = info_nce(eye, eye, torch.tensor(0.05))
    assert correct == 4 and float(loss) < 1e-6


def test_criterion_on_a_real_paired_batch_equals_the_direct_formulation(s2c_paired):
    model = tiny_model(s2c_paired)
    crit = AlignCriterion(s2c_paired, AlignCriterionConfig(align_features="encoder_mean", align_temperature=0.2,
                                                           encoder_embed_dim=64))
    ds = s2c_paired.datasets["train"]
    sample = ds.collater([ds[i] for i in range(5)])
    loss, n, log = crit(model, sample)
    assert n == 5 and "target" in sample  # labels are in the batch, and the loss below never uses them
    enc, pad = model.encode(**sample["net_input"])
    zs = model.pool(enc, pad, features="encoder_mean")
    tok = sample["other_modality_net_input"]["src_tokens"]
    enc_t, pad_t = model.encode(src_tokens=tok)
    zt = model.pool(enc_t, pad_t, features="encoder_mean")
    ref = direct_info_nce(zs, zt, crit.tau())
    assert torch.allclose(loss, ref, rtol=1e-5)
    params = [p for p in model.parameters()] + [crit.log_tau]
    g = torch.autograd.grad(loss, params, allow_unused=True)
    g_ref = torch.autograd.grad(ref, params, allow_unused=True)
    assert sum(x is not None for x in g) > 10
    for a, b in zip(g, g_ref):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1e-4, atol=1e-7))


def test_ctc_term_is_torch_ctc_over_the_transcript_characters(s2c_paired):
    model = tiny_model(s2c_paired)
    crit = AlignCriterion(s2c_paired, AlignCriterionConfig(align_ctc_weight=0.5, align_learn_temperature=False,
                                                           encoder_embed_dim=64))
    ds = s2c_paired.datasets["train"]
    sample = ds.collater([ds[i] for i in range(3)])
    loss, _, log = crit(model, sample)
    enc, pad = model.encode(**sample["net_input"])
    ref = 0.0
    for i in range(3):
        frames = int((~pad[i]).sum())
        chars = sample["other_modality_net_input"]["src_tokens"][i]
        chars = chars[chars != s2c_paired.text_dictionary.pad()]
        lp = F.log_softmax(crit.ctc_proj(enc[i, :frames]), -1)[:, None]  # [T,1,V]
        ref = ref + F.ctc_loss(lp, chars[None], [frames], [len(chars)], blank=crit.blank, reduction="sum")
    assert torch.allclose(log["ctc_loss"], ref.detach(), rtol=1e-4)
    assert torch.allclose(loss, log["nce_loss"] + 0.5 * ref, rtol=1e-4)
    assert crit.blank == s2c_paired.text_dictionary.index("<ctc_blank>") != s2c_paired.text_dictionary.unk()


def test_ctc_head_starts_from_the_official_encoder_proj(s2c_paired, official_tiny, corpus_dir):
    from fairseq_xmodal.checkpoints import load_state

    official = load_state(official_tiny)["model"]
    task = S2CTask.setup_task(S2CConfig(data=corpus_dir, train_subset="train", seed=1, paired_source_modality=True,
                                        text_dictionary=os.path.join(os.path.dirname(official_tiny), "dict.txt")))
    crit = AlignCriterion(task, AlignCriterionConfig(align_ctc_weight=1.0, align_ctc_init=official_tiny,
                                                     encoder_embed_dim=official["encoder.proj.weight"].shape[1]))
    assert torch.equal(crit.ctc_proj.weight.data, official["encoder.proj.weight"])
    assert torch.equal(crit.ctc_proj.bias.data, official["encoder.proj.bias"])
    with pytest.raises(ValueError, match="needs criterion.align_ctc_weight"):
        AlignCriterion(task, AlignCriterionConfig(align_ctc_init=official_tiny, encoder_embed_dim=64))
    with pytest.raises(ValueError, match="the CTC head needs"):
        AlignCriterion(task, AlignCriterionConfig(align_ctc_weight=1.0, align_ctc_init=official_tiny,
                                                  encoder_embed_dim=32))


def test_refuses_dev_or_test_as_training_split_and_unpaired_tasks(corpus_dir):
    for split in ("dev", "test", "train,dev.k8"):
        task = S2CTask.setup_task(S2CConfig(data=corpus_dir, train_subset=split, seed=1, paired_source_modality=True))
        with pytest.raises(ValueError, match="never on dev/test"):
            AlignCriterion(task, AlignCriterionConfig(encoder_embed_dim=64))
    task = S2CTask.setup_task(S2CConfig(data=corpus_dir, train_subset="train", seed=1))
    with pytest.raises(ValueError, match="paired_source_modality"):
        AlignCriterion(task, AlignCriterionConfig(encoder_embed_dim=64))


def brute_force_ranks(q, k):
    out = []
    for i in range(len(q)):
        sims = [float(np.dot(q[i], k[j]) / np.linalg.norm(q[i]) / np.linalg.norm(k[j])) for j in range(len(k))]
        out.append(1 + sum(1 for j in range(len(k)) if j != i and sims[j] >= sims[i]))
    return np.array(out)


def test_retrieval_ranks_equal_brute_force_and_chance():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    k[:10] = q[:10] * 3.0  # ten perfect pairs (scale does not matter: cosine)
    k[10] = k[11]  # a tie among keys
    q[11] = k[11]
    r = retrieval.ranks(q, k)
    assert np.array_equal(r, brute_force_ranks(q, k))
    assert (r[:10] == 1).all()
    s = retrieval.summarise(r, resamples=200)
    assert s["recall@1"] == pytest.approx(100 * (r <= 1).mean()) and s["mean_rank"] == pytest.approx(r.mean())
    assert s["ci"]["recall@1"][0] <= s["recall@1"] <= s["ci"]["recall@1"][1]
    assert retrieval.chance(30) == {"recall@1": pytest.approx(100 / 30), "recall@5": pytest.approx(500 / 30),
                                    "mean_rank": 15.5}


def param_state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_alignment_run_resumes_keeps_frozen_groups_reads_only_train_and_raises_retrieval(corpus_dir, imported_init,
                                                                                          tmp_path):
    # A copy of the data folder whose dev/test files are unreadable garbage: a read of them fails the run.
    data = str(tmp_path / "data")
    shutil.copytree(corpus_dir, data)
    for name in os.listdir(data):
        if name.split(".")[0] in ("dev", "test", "valid"):
            os.remove(os.path.join(data, name))
            os.mkdir(os.path.join(data, name))  # a folder where the file was: any open() raises
    run = str(tmp_path / "align")
    common = [f"task.data={data}", f"checkpoint.finetune_from_model={imported_init['s2c']}",
              "+model.freeze=[text_prenet]", "dataset.batch_size=8", "checkpoint.save_interval_updates=3",
              "checkpoint.keep_interval_updates=1", "common.log_interval=1"]
    hydra_train("s2c_align_demo", run, *common, "optimization.max_update=3")
    last = os.path.join(run, "checkpoints", "checkpoint_last.pt")
    first = param_state(last)
    assert first["optimizer_history"][-1]["num_updates"] == 3
    tau3 = float(first["criterion"]["log_tau"])
    assert tau3 != pytest.approx(np.log(0.1), abs=1e-9)  # learned
    hydra_train("s2c_align_demo", run, *common, "optimization.max_update=5")
    final = param_state(last)
    assert final["optimizer_history"][-1]["num_updates"] == 5
    log = open(os.path.join(run, "hydra_train.log")).read()
    resumed = log.split("Loaded checkpoint checkpoints/checkpoint_last.pt (epoch 1 @ 3 updates)")
    assert len(resumed) == 2, log[-2000:]  # the second run started from update 3 ...
    assert "num_updates=4" in resumed[1] and "num_updates=1," not in resumed[1]  # ... and continued, not restarted
    init = param_state(imported_init["s2c"])["model"]
    moved = [k for k in init if not torch.equal(init[k], final["model"][k])]
    assert any(k.startswith("encoder.") for k in moved) and any(k.startswith("speech_encoder_prenet.") for k in moved)
    for k in init:  # frozen (text prenet) and unused by encoder_mean features (decoder, head): bit-identical
        if k.startswith(("text_encoder_prenet.", "decoder.", "speaker_decoder_postnet.")):
            assert torch.equal(init[k], final["model"][k]), k
    # retrieval on the training pairs, before and after (train is all this test's data folder has left)
    before = retrieval.retrieval(imported_init["s2c"], data, "train", str(tmp_path / "r0"), resamples=100)
    proc = run_cli(["xmodal-evaluate", "--retrieval", "--checkpoint", last, "--data", data, "--split", "train",
                    "--out", str(tmp_path / "r1"), "--bootstrap", "100"])
    assert "chance" in proc.stdout
    after = json.load(open(tmp_path / "r1" / "retrieval.json"))
    assert after["speech_to_text"]["n"] == before["speech_to_text"]["n"] == len(open(f"{data}/train.tsv").readlines()) - 1
    assert after["chance"]["recall@1"] == pytest.approx(100 / after["speech_to_text"]["n"])
    n = after["speech_to_text"]["n"]
    for m in (before, after):
        for key in ("speech_to_text", "text_to_speech"):
            assert 1 <= m[key]["mean_rank"] <= n and 0 <= m[key]["recall@1"] <= m[key]["recall@5"] <= 100
    assert after["speech_to_text"] != before["speech_to_text"]  # the aligned weights are the ones scored


def test_training_on_dev_is_refused_with_one_line(corpus_dir, imported_init, tmp_path):
    proc = hydra_train("s2c_align_demo", str(tmp_path / "bad"), f"task.data={corpus_dir}",
                       f"checkpoint.finetune_from_model={imported_init['s2c']}", "dataset.train_subset=dev",
                       "optimization.max_update=1", check=False)
    assert proc.returncode != 0 and "never on dev/test" in proc.stdout + proc.stderr
