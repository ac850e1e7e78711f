"""Methods of docs/methods/: layer-wise transfer with Xavier controls, freezing (whole run and first N updates) and the
embedder warm-up, on real small checkpoints and in real `fairseq-hydra-train` runs of the tiny demo recipe.

What is proven: re-initialised layers follow the Xavier distributions (bound / variance / std, fans from the tensor
shape) and differ from every input; transferred and kept layers are bit-identical; frozen parameters are bit-identical
after real training (and have no Adam state while held) while the others change; the warm-up trains only the target
prenet and the head in stage 1, everything trainable in stage 2, and resumes across the stage boundary."""
import glob
import json
import math
import re
import shutil

import pytest
import torch

from conftest import CONFIG_DIR, hydra_train
from fairseq_xmodal.checkpoints import build_task_and_model, load_state, make_cfg, save_checkpoint
from fairseq_xmodal.cli.transfer import main as transfer_main
from fairseq_xmodal.cli.transplant import main as transplant_main
from fairseq_xmodal import selectors
from fairseq_xmodal.models import freezing
from fairseq_xmodal.transfer import TransferError, TransferPlan, transfer, transplanted_selectors

TEXT_HEAD = ("text_encoder_prenet.", "speaker_decoder_postnet.")


def tiny(task, corpus_dir, **model):
    cfg = make_cfg({"_name": task, "data": corpus_dir}, {"_name": "speecht5_tiny", **model})
    return build_task_and_model(cfg)


def changed(a, b, keys=None):
    return sorted(k for k in (keys or a) if not torch.equal(a[k], b[k]))


def layer_keys(sd, prefix):
    return [k for k in sd if k.startswith(prefix)]


@pytest.fixture(scope="module")
def other_s2c(tmp_path_factory, corpus_dir):
    """An s2c checkpoint whose body differs from the imported inits (random tiny model, seed 7): the transfer source."""
    path = str(tmp_path_factory.mktemp("other") / "other_s2c.pt")
    cfg = make_cfg({"_name": "s2c", "data": corpus_dir}, {"_name": "speecht5_tiny"}, seed=7)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        task, model = build_task_and_model(cfg)
    save_checkpoint(path, cfg, model.state_dict(), task.state.state_dict)
    return path


@pytest.fixture(scope="module")
def transplants(tmp_path_factory, other_s2c, imported_init, corpus_dir):
    """xmodal-prepare-transplants: encoder layers {first,middle,last,all} x {transferred, xavier_uniform} for t2c."""
    out = tmp_path_factory.mktemp("transplants")
    assert transplant_main(["--source", other_s2c, "--base", imported_init["t2c"], "--task", "t2c",
                            "--data", corpus_dir, "--out", str(out), "--seed", "3"]) == 0
    with open(out / "transplants.json") as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------- selectors and stages


def test_freeze_selectors_stage_api_and_refusals(corpus_dir):
    assert [selectors.named_layers(n, 12) for n in ("first", "middle", "last")] == [[0], [6], [11]]
    assert selectors.named_layers("all", 3) == [0, 1, 2] and selectors.named_layers("2-4", 6) == [2, 3, 4]
    for bad in ("12", "3-1", "top"):
        with pytest.raises(ValueError):
            selectors.named_layers(bad, 12)

    # permanent, by layer name and `prenet` (the task's own: text_prenet for t2c)
    task, model = tiny("t2c", corpus_dir, freeze=["encoder.layers.last", "prenet"])
    assert model.target_prenet == "text_prenet" and model.frozen == {"text_prenet"}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters() if n.startswith(("encoder.layers.1.", "text_encoder_"))}
    assert model.frozen_parameters == frozen and not model.held_parameters
    for cfg, msg in ((dict(freeze=["encoders"]), "unknown group"), (dict(freeze=["encoder.layers.2"]), "within 0-1"),
                     (dict(freeze_updates=5), "model.freeze is empty"),
                     (dict(freeze=["encoder.layers=0"]), "cannot read")):
        with pytest.raises(ValueError, match=msg):
            tiny("t2c", corpus_dir, **cfg)

    # embedder warm-up: the stage follows set_num_updates, in both directions (a resume lands in the right stage)
    task, model = tiny("s2c", corpus_dir, embedder_warmup_updates=3)
    assert model.target_prenet == "speech_prenet" and model.in_embedder_warmup and model.training_stage == 1
    names = [n for n, _ in model.named_parameters()]
    assert model.held_parameters == {n for n in names if not n.startswith(("speech_encoder_prenet.",
                                                                             "speaker_decoder_postnet."))}
    assert model.no_grad_groups == {"text_prenet", "encoder", "decoder"}
    model.set_num_updates(3)
    assert not model.in_embedder_warmup and model.training_stage == 2 and not model.held_parameters
    model.set_num_updates(2)
    assert model.in_embedder_warmup and "stage 2 from update 3" in model.stage_summary()

    # held parameters: no gradient inside hold_frozen, requires_grad (hence in the optimizer) outside it
    model.train()
    with model.hold_frozen() as held:
        assert held and all(not p.requires_grad for p in held)
        model(0.1 * torch.randn(2, 8000), None).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(p.requires_grad for p in model.parameters())
    assert all(grads[n] is None for n in model.held_parameters)
    assert grads["speech_encoder_prenet.post_extract_proj.weight"] is not None
    assert grads["speaker_decoder_postnet.output_projection.weight"] is not None

    # fairseq's FP16Optimizer turns a missing gradient into zeros: refused while anything is held
    from fairseq.optim.fp16_optimizer import FP16Optimizer

    with pytest.raises(ValueError, match="memory_efficient_fp16"):
        with freezing.training_step(model, object.__new__(FP16Optimizer), 0):
            pass


# ------------------------------------------------------------------------------------------ Xavier re-initialisation


def _fans(t):
    return torch.nn.init._calculate_fan_in_and_fan_out(t)


def test_xavier_reinit_follows_the_distribution_and_is_recorded(other_s2c, imported_init, corpus_dir, tmp_path):
    base = load_state(imported_init["t2c"])["model"]
    source = load_state(other_s2c)["model"]
    plan = dict(source=other_s2c, task="t2c", data=corpus_dir, modality_from=imported_init["t2c"], rest="modality",
                reinit=["encoder.layers", "decoder.layers"], seed=5)
    stats = {}
    for init in ("xavier_uniform", "xavier_normal"):
        out = str(tmp_path / f"{init}.pt")
        report = transfer(TransferPlan(out=out, init=init, **plan))
        got = load_state(out)["model"]
        with open(out + ".transfer.json") as f:
            acc = json.load(f)
        init_keys = set(acc["initialised"])
        assert init_keys == {k for k in got if k.startswith(("encoder.layers.", "decoder.layers."))}
        assert acc["plan"]["init"] == init and acc["plan"]["seed"] == 5 and set(acc["init_notes"]) == init_keys
        assert changed(got, base, [k for k in got if k not in init_keys]) == []  # the rest: bit-identical to base
        pooled = []
        for k in sorted(init_keys):
            w, note = got[k], acc["init_notes"][k]
            if "layer_norm" in k:
                assert torch.equal(w, torch.ones_like(w) if k.endswith("weight") else torch.zeros_like(w)), k
                assert note.startswith("LayerNorm"), note
            elif k.endswith("bias"):
                assert not w.any() and note == "bias = 0", k
            else:
                fan_in, fan_out = _fans(w)
                assert w.dim() == 2 and note == f"{init}(fan_in={fan_in}, fan_out={fan_out})", (k, note)
                assert not torch.equal(w, base[k]) and not torch.equal(w, source[k]), k
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                std = math.sqrt(2.0 / (fan_in + fan_out))
                if init == "xavier_uniform":
                    assert w.abs().max() <= bound, k
                    assert abs(w.var().item() / (bound ** 2 / 3) - 1) < 0.1, k  # U(-a, a): variance a^2 / 3
                    pooled.append((w / bound) ** 2)
                else:
                    assert abs(w.std().item() / std - 1) < 0.1, k
                    assert w.abs().max() > bound  # not uniform: a normal sample of this size exceeds it
                    pooled.append((w / std) ** 2)
                assert abs(w.mean().item()) < 5 * std / math.sqrt(w.numel()), k
        stats[init] = torch.cat([p.flatten() for p in pooled]).mean().item()
        assert "init rules:" in "\n".join(report.summary_lines())
    assert abs(stats["xavier_uniform"] - 1 / 3) < 0.01 and abs(stats["xavier_normal"] - 1) < 0.03

    # seeded: same seed, same tensors, also when fewer keys are re-initialised (one generator per key); new seed differs
    a = load_state(str(tmp_path / "xavier_uniform.pt"))["model"]
    transfer(TransferPlan(out=str(tmp_path / "one.pt"), init="xavier_uniform",
                          **{**plan, "reinit": ["encoder.layers.1"]}))
    transfer(TransferPlan(out=str(tmp_path / "seed6.pt"), init="xavier_uniform", **{**plan, "seed": 6}))
    one, seed6 = load_state(str(tmp_path / "one.pt"))["model"], load_state(str(tmp_path / "seed6.pt"))["model"]
    layer1 = layer_keys(a, "encoder.layers.1.")
    assert changed(a, one, layer1) == []
    assert changed(one, base, layer_keys(a, "encoder.layers.0.")) == []
    assert "encoder.layers.1.fc1.weight" in changed(a, seed6, layer1)

    # prenets through the CLI: weight-normalised conv (effective weight = the sample), embedding padding row, 1-D params
    out = str(tmp_path / "prenets.pt")
    assert transfer_main(["--source", imported_init["s2c"], "--task", "t2c", "--data", corpus_dir, "--out", out,
                          "--reinit", "speech_prenet,text_prenet", "--init", "xavier_normal", "--seed", "2"]) == 0
    got = load_state(out)["model"]
    with open(out + ".transfer.json") as f:
        notes = json.load(f)["init_notes"]
    g, v = got["speech_encoder_prenet.pos_conv.0.weight_g"], got["speech_encoder_prenet.pos_conv.0.weight_v"]
    assert torch.allclose(g * v / torch.norm_except_dim(v, 2, 2), v, atol=1e-6)
    fan_in, fan_out = _fans(v)
    assert abs(v.std().item() / math.sqrt(2.0 / (fan_in + fan_out)) - 1) < 0.1
    emb = got["text_encoder_prenet.encoder_prenet.0.weight"]
    assert not emb[1].any() and "padding row 1 = 0" in notes["text_encoder_prenet.encoder_prenet.0.weight"]
    s2c_init = load_state(imported_init["s2c"])["model"]
    assert "model's own seeded init" in notes["speech_encoder_prenet.mask_emb"]
    assert not torch.equal(got["speech_encoder_prenet.post_extract_proj.weight"],
                           s2c_init["speech_encoder_prenet.post_extract_proj.weight"])


# ---------------------------------------------------------------------------------------------- layer-wise transplants


def test_prepared_transplants_are_exact_and_the_sweeps_select_them(transplants, other_s2c, imported_init, corpus_dir):
    assert transplants["layer_sets"] == {"first": [0], "middle": [1], "last": [1], "all": [0, 1]}
    assert len(transplants["files"]) == 8 and transplants["n_layers"] == 2
    base, source = load_state(imported_init["t2c"])["model"], load_state(other_s2c)["model"]
    for name, f in transplants["files"].items():
        got = load_state(f["path"])["model"]
        chosen = [k for k in got if any(k.startswith(f"encoder.layers.{i}.") for i in f["layers"])]
        rest = [k for k in got if k not in chosen]
        assert chosen and changed(got, base, rest) == [], name  # everything else: the base, bit for bit
        if f["init"] == "transferred":
            assert changed(got, source, chosen) == [], name  # the transplanted layers: the source, bit for bit
        else:
            weights = [k for k in chosen if k.endswith("weight") and got[k].dim() == 2]
            assert changed(got, source, weights) == changed(got, base, weights) == sorted(weights), name
        expected = [f"encoder.layers.{i}" for i in f["layers"]]
        assert transplanted_selectors(f["path"]) == expected, name
    with pytest.raises(TransferError, match="transfer.json not found"):
        transplanted_selectors(imported_init["t2c"])

    params, cfg = _compose("sweep_transplant", "sweep/base=t2c_demo", f"task.data={corpus_dir}",
                           f"checkpoint.finetune_from_model={transplants['files']['last.xavier_uniform']['path']}",
                           "sweep/transplanted=frozen")
    assert params == {"sweep/transplanted": "trained,frozen"}
    assert cfg["model"]["freeze"] == ["encoder.layers.1"] and cfg["model"]["freeze_updates"] == 0
    _, cfg = _compose("sweep_transplant", f"task.data={corpus_dir}", "sweep/transplanted=trained")
    assert cfg["model"]["freeze"] == [] and cfg["task"]["_name"] == "t2c"
    params, cfg = _compose("sweep_warmup", f"task.data={corpus_dir}")
    assert params == {"model.embedder_warmup_updates": "0,1000"} and cfg["task"]["_name"] == "s2c"
    assert cfg["model"]["warmup_trainable"] == ["prenet", "pooler", "head"]


def _compose(config_name, *overrides):
    from fairseq.dataclass.initialize import hydra_init
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    hydra_init(config_name)
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.1"):
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    return params, {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("task", "model", "checkpoint")}


def test_frozen_transplanted_layer_is_unchanged_after_real_training(transplants, corpus_dir, tmp_path):
    """One job of sweep_transplant (first layer, Xavier, frozen) as fairseq-hydra-train runs it."""
    init = transplants["files"]["first.xavier_uniform"]["path"]
    run = tmp_path / "first_xavier_frozen"
    hydra_train("sweep_transplant", str(run), "sweep/base=t2c_demo", f"task.data={corpus_dir}",
                f"checkpoint.finetune_from_model={init}", "sweep/transplanted=frozen", "optimization.max_update=8")
    log = (run / "hydra_train.log").read_text()
    assert "frozen for the whole run: encoder.layers.0" in log and "'freeze': ['encoder.layers.0']" in log
    before, after = load_state(init)["model"], load_state(str(run / "checkpoints" / "checkpoint_last.pt"))
    assert after["optimizer_history"][-1]["num_updates"] == 8
    after = after["model"]
    assert changed(before, after, layer_keys(before, "encoder.layers.0.")) == []
    moved = {k.rsplit(".", 1)[0] for k in changed(before, after)}
    for part in ("encoder.layers.1.fc1", "encoder.layers.1.self_attn.q_proj", "text_encoder_prenet.encoder_prenet.0",
                 "decoder.layers.1.encoder_attn.v_proj", "speaker_decoder_postnet.output_projection"):
        assert part in moved, part


# ---------------------------------------------------------------------------------------------- first-N freezing


def _adam_state_names(state, names):
    """Parameter names with Adam state (the optimizer holds every model parameter: nothing is permanently frozen)."""
    return {names[i] for i in state["last_optimizer_state"]["state"]}


def test_freeze_for_the_first_n_updates_real_training(imported_init, corpus_dir, tmp_path):
    run = tmp_path / "freeze5"
    hydra_train("t2c_demo", str(run), f"task.data={corpus_dir}",
                f"checkpoint.finetune_from_model={imported_init['t2c']}", "+model.freeze=[encoder.layers.0,decoder]",
                "+model.freeze_updates=5", "checkpoint.save_interval_updates=5", "optimization.max_update=8")
    log = (run / "hydra_train.log").read_text()
    assert "update 0; training" in log and "model.freeze held until update 5: encoder.layers.0, decoder" in log
    assert re.search(r"update 5; training speech_prenet, text_prenet, encoder, decoder, head\n", log), log[-3000:]
    init = load_state(imported_init["t2c"])["model"]
    names = list(init)  # state-dict order = parameter order (the model has no buffers)
    at5 = load_state(glob.glob(str(run / "checkpoints" / "checkpoint_*_5.pt"))[0])
    at8 = load_state(str(run / "checkpoints" / "checkpoint_last.pt"))
    assert at5["optimizer_history"][-1]["num_updates"] == 5 and at8["optimizer_history"][-1]["num_updates"] == 8
    held = layer_keys(init, "encoder.layers.0.") + layer_keys(init, "decoder.")
    assert changed(init, at5["model"], held) == []  # bit-identical while held
    assert not _adam_state_names(at5, names) & set(held)  # ... and never touched by Adam (no moments, no decay)
    moved5 = changed(init, at5["model"])
    assert "encoder.layers.1.fc1.weight" in moved5 and "speaker_decoder_postnet.output_projection.weight" in moved5
    moved8 = changed(at5["model"], at8["model"], held)
    for k in ("encoder.layers.0.fc1.weight", "encoder.layers.0.self_attn.out_proj.weight",
              "decoder.layers.1.fc2.weight", "decoder.layers.0.encoder_attn.v_proj.weight"):
        assert k in moved8, k  # released at update 5: trained from then on
    assert set(held) & _adam_state_names(at8, names)


# ---------------------------------------------------------------------------------------------- embedder warm-up


def _gradient_names(checkpoint, corpus_dir):
    """Parameters with a clearly non-zero gradient on the first t2c training batch (the loss of the criterion)."""
    state = load_state(checkpoint)
    task, model = tiny("t2c", corpus_dir)
    model.load_state_dict(state["model"])
    criterion = task.build_criterion(make_cfg({"_name": "t2c", "data": corpus_dir},
                                              {"_name": "speecht5_tiny"}).criterion)
    task.load_dataset("train")
    itr = task.get_batch_iterator(task.dataset("train"), max_sentences=8).next_epoch_itr(shuffle=False)
    model.train()
    criterion(model, next(itr))[0].backward()
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().max() > 1e-6}


def test_embedder_warmup_stage_boundary_and_resume(imported_init, corpus_dir, tmp_path):
    run = tmp_path / "warmup"
    common = (f"task.data={corpus_dir}", f"checkpoint.finetune_from_model={imported_init['t2c']}",
              "+model.embedder_warmup_updates=6")
    hydra_train("t2c_demo", str(run), *common, "optimization.max_update=6")  # stops exactly at the boundary
    ckpt = run / "checkpoints" / "checkpoint_last.pt"
    init, at6 = load_state(imported_init["t2c"])["model"], load_state(str(ckpt))
    assert at6["optimizer_history"][-1]["num_updates"] == 6
    moved1 = changed(init, at6["model"])
    assert moved1 and all(k.startswith(TEXT_HEAD) for k in moved1), moved1  # stage 1: text prenet + head only
    assert {k.split(".")[0] for k in moved1} == {"text_encoder_prenet", "speaker_decoder_postnet"}
    assert _adam_state_names(at6, list(init)) <= {k for k in init if k.startswith(TEXT_HEAD)}
    log1 = (run / "hydra_train.log").read_text()
    assert "update 0; embedder warm-up stage 1 (stage 2 from update 6); training text_prenet, head" in log1
    assert re.search(r"num_updates 6 \| stage 1 \|", log1)
    shutil.copy(ckpt, tmp_path / "at6.pt")

    hydra_train("t2c_demo", str(run), *common, "optimization.max_update=10")  # the same run, resumed
    log = (run / "hydra_train.log").read_text()[len(log1):]
    assert re.search(r"Loaded checkpoint \S*checkpoint_last\.pt \(epoch 1 @ 6 updates\)", log), log[-3000:]
    assert "loading pretrained model" not in log  # resumed, not restarted from the init
    assert "update 6; embedder warm-up stage 2 (stage 1 was updates 0-5)" in log
    assert "embedder warm-up stage 1" not in log and re.search(r"num_updates 10 \| stage 2 \|", log)
    at10 = load_state(str(ckpt))
    assert at10["optimizer_history"][-1]["num_updates"] == 10
    moved2 = set(changed(at6["model"], at10["model"]))
    trainable = _gradient_names(str(tmp_path / "at6.pt"), corpus_dir)  # at the start of stage 2
    assert trainable - moved2 == set()  # stage 2: every parameter with a gradient trains
    assert any(k.startswith("encoder.layers.0.") for k in moved2) and any(k.startswith("decoder.") for k in moved2)
    assert not any(k.startswith("speech_encoder_prenet.") for k in moved2)  # text batches never reach it
