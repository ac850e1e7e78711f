"""Length-bucketed s2c batching through fairseq's own task.get_batch_iterator (sizes in samples, dataset.max_tokens),
the long-utterance policies (error / skip / crop), the bucketed configs, and module freezing."""
import logging
import os

import numpy as np
import pytest
import torch
from fairseq import tasks, utils
from fairseq.dataclass.initialize import add_defaults, hydra_init
from fairseq.dataclass.utils import omegaconf_no_object_check
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import CONFIG_DIR
from fairseq_xmodal.models.speecht5 import SpeechT5Classifier, SpeechT5TinyConfig
from fairseq_xmodal.selectors import GROUPS as FREEZE_GROUPS
from fairseq_xmodal.tasks.s2c import S2CConfig, S2CTask


def s2c_task(corpus_dir, **cfg):
    task = S2CTask.setup_task(S2CConfig(data=corpus_dir, train_subset="train", seed=1, **cfg))
    task.load_dataset("train")
    task.load_dataset("valid")
    return task


def batches(task, split, max_tokens, training=True, rbsm=1):
    """What fairseq's trainer asks for: training passes max_positions = max_tokens and ignore_invalid_inputs=True
    (fairseq would drop long utterances silently there); validation passes only max_tokens_valid."""
    itr = task.get_batch_iterator(
        task.datasets[split], max_tokens=max_tokens, max_positions=max_tokens if training else None,
        ignore_invalid_inputs=training, required_batch_size_multiple=rbsm, seed=1, epoch=1,
        disable_iterator_cache=True)
    return [list(b) for b in itr.frozen_batches]


def test_max_tokens_batches_many_short_or_one_long_and_drops_nothing(corpus_dir):
    task = s2c_task(corpus_dir)
    ds = task.datasets["train"]
    limit = 20000  # 1.25 s; the corpus has 0.4-1.2 s (6,400-19,200 samples)
    bs = batches(task, "train", limit)
    flat = sorted(i for b in bs for i in b)
    assert flat == list(range(len(ds)))  # every utterance exactly once
    for b in bs:
        assert len(b) * ds.sizes[b].max() <= limit  # padded samples bounded by max_tokens
    assert max(len(b) for b in bs) >= 2
    for i in range(len(ds)):
        batch = next(b for b in bs if i in b)
        if ds.sizes[i] > limit // 2:
            assert batch == [i]  # a long utterance fills a batch alone
    short = [b for b in bs if ds.sizes[b].max() <= limit // 2]
    assert len(short) >= 2 and sum(len(b) >= 2 for b in short) >= len(short) - 1  # short ones share (but the last)
    sample = ds.collater([ds[i] for i in bs[0]])
    assert sample["net_input"]["source"].shape == (len(bs[0]), ds.sizes[bs[0]].max())


def long_ids(ds, limit):
    return [ds.ids[i] for i in np.nonzero(ds.sizes > limit)[0]]


def test_long_utterances_error_names_them(corpus_dir):
    task = s2c_task(corpus_dir)
    too_long = long_ids(task.datasets["train"], 12000)
    assert too_long
    with pytest.raises(ValueError, match="long_utterances") as e:
        batches(task, "train", 12000)
    assert too_long[0] in str(e.value)
    with pytest.raises(ValueError, match="longer than the batch limit"):
        batches(task, "valid", 12000, training=False)


def test_long_utterances_skip_reports_every_id(corpus_dir, caplog):
    task = s2c_task(corpus_dir, long_utterances="skip")
    ds = task.datasets["train"]
    too_long = long_ids(ds, 12000)
    with caplog.at_level(logging.WARNING):
        bs = batches(task, "train", 12000)
    kept = sorted(i for b in bs for i in b)
    assert kept == sorted(np.nonzero(ds.sizes <= 12000)[0].tolist())
    assert all(uid in caplog.text for uid in too_long)
    bs_valid = batches(task, "valid", 12000, training=False)  # skip applies to validation too, also reported
    assert sum(map(len, bs_valid)) == int((task.datasets["valid"].sizes <= 12000).sum())


def test_long_utterances_crop_trains_on_seeded_windows(corpus_dir):
    task = s2c_task(corpus_dir, long_utterances="crop")
    ds = task.datasets["train"]
    long_idx = np.nonzero(ds.true_sizes > 12000)[0]
    bs = batches(task, "train", 12000)
    assert sorted(i for b in bs for i in b) == list(range(len(ds)))  # nothing dropped
    assert ds.sizes.max() == 12000 and all(len(b) * ds.sizes[b].max() <= 12000 for b in bs)
    starts = {}
    for epoch in (1, 2):
        ds.set_epoch(epoch)
        for i in long_idx[:4]:
            item = ds[int(i)]
            full = torch.from_numpy(ds.load_audio(int(i)))
            s = item["crop_start"]
            assert item["source"].numel() == 12000 and torch.equal(item["source"], full[s:s + 12000])
            assert ds[int(i)]["crop_start"] == s  # seeded by (seed, epoch, index): reproducible
            starts[epoch, int(i)] = s
    assert any(starts[1, int(i)] != starts[2, int(i)] for i in long_idx[:4])  # a new window per epoch
    short = int(np.nonzero(ds.true_sizes <= 12000)[0][0])
    assert ds[short]["crop_start"] is None


def test_crop_never_applies_to_evaluation_splits(corpus_dir):
    task = s2c_task(corpus_dir, long_utterances="crop")
    with pytest.raises(ValueError, match="never cropped"):
        batches(task, "valid", 12000, training=False)
    assert task.datasets["valid"].crop_samples is None


def test_evaluation_split_over_max_tokens_valid_fails_at_load_time(corpus_dir):
    """Not at the first validation, possibly hours into training."""
    cfg = compose_cfg("s2c_bucketed_demo", f"task.data={corpus_dir}", "dataset.max_tokens_valid=12000",
                      "task.long_utterances=crop")
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")  # training splits are handled when batching (crop)
    with pytest.raises(ValueError, match="max_tokens_valid"):
        task.load_dataset("valid")


def test_required_batch_size_multiple_drop_is_an_error(corpus_dir):
    task = s2c_task(corpus_dir)
    with pytest.raises(ValueError, match="required_batch_size_multiple=1"):
        batches(task, "train", 20000, rbsm=8)


def compose_cfg(name, *overrides):
    GlobalHydra.instance().clear()
    hydra_init(name)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.1"):
        cfg = compose(name, overrides=list(overrides))
    utils.import_user_module(cfg.common)
    add_defaults(cfg)
    with omegaconf_no_object_check():
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    return cfg


def test_bucketed_configs(corpus_dir):
    cfg = compose_cfg("s2c_bucketed", f"task.data={corpus_dir}")
    assert cfg.dataset.max_tokens == 1_400_000 and cfg.dataset.batch_size is None
    assert cfg.dataset.max_tokens_valid >= cfg.dataset.max_tokens and cfg.dataset.required_batch_size_multiple == 1
    assert list(cfg.optimization.update_freq) == [1] and cfg.task.long_utterances == "error"
    assert list(cfg.model.freeze) == [] and cfg.model.checkpoint_activations is False
    demo = compose_cfg("s2c_bucketed_demo", f"task.data={corpus_dir}")
    task = tasks.setup_task(demo.task)
    task.load_dataset("train")
    bs = batches(task, "train", demo.dataset.max_tokens)
    assert sum(map(len, bs)) == 60 and max(map(len, bs)) >= 3


def test_frozen_groups_get_no_grad_and_stay_unchanged_after_an_update(corpus_dir):
    from fairseq.trainer import Trainer

    cfg = compose_cfg("s2c_bucketed_demo", f"task.data={corpus_dir}", "model.freeze=[speech_prenet,encoder]",
                      "lr_scheduler._name=fixed", "lr_scheduler.warmup_updates=0")
    task = tasks.setup_task(cfg.task)
    model, criterion = task.build_model(cfg.model), task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    task.load_dataset("train")
    sample = next(trainer.get_train_iterator(epoch=1).next_epoch_itr(shuffle=False))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train_step([sample])
    frozen = ("speech_encoder_prenet.", "encoder.", "text_encoder_prenet.")  # text prenet: no speech gradient
    for n, p in model.named_parameters():
        if n.startswith(frozen):
            assert torch.equal(p, before[n]), n
            assert p.grad is None and not (n.startswith(frozen[:2]) and p.requires_grad), n
        else:  # decoder and head train (some decoder weights get an exactly zero gradient: zero query, one key)
            assert p.requires_grad and p.grad is not None, n
            assert torch.equal(p, before[n]) == (not p.grad.any()), n
    assert not torch.equal(model.speaker_decoder_postnet.output_projection.weight,
                           before["speaker_decoder_postnet.output_projection.weight"])
    model.train()
    enc, _ = model.encode(**{k: v for k, v in sample["net_input"].items()})
    assert not enc.requires_grad  # prenet + encoder ran under no_grad: their backward is skipped


def test_set_frozen_middle_group_and_validation():
    torch.manual_seed(0)
    model = SpeechT5Classifier(SpeechT5TinyConfig(), text_vocab_size=20, text_padding_idx=1, num_classes=3)
    model.set_frozen(["decoder"])  # frozen in the middle: gradients still flow through it to the encoder
    model.train()
    source = 0.1 * torch.randn(2, 8000)
    model(source, torch.zeros(2, 8000, dtype=torch.bool)).sum().backward()
    assert all(p.grad is None for p in model.decoder.parameters())
    assert all(p.grad is not None for p in model.encoder.layers.parameters())
    with pytest.raises(ValueError, match="unknown group"):
        model.set_frozen(["encoders"])
    with pytest.raises(ValueError, match="nothing would be trained"):
        model.set_frozen(FREEZE_GROUPS)
    model.set_frozen(["speech_prenet", "encoder", "decoder", "head"])
    with pytest.raises(ValueError, match="nothing to train"):
        model(source, None)
    model.set_frozen([])
    assert all(p.requires_grad for p in model.parameters()) and model.frozen == frozenset()
    assert os.path.isfile(os.path.join(CONFIG_DIR, "s2c_bucketed.yaml"))
