"""xmodal-import-official on transformers-format SpeechT5 folders (config.json + model.safetensors).

The folders are randomly initialised HF models written with `save_pretrained` (nothing is fetched from a hub); the
imported checkpoint, loaded through fairseq's own loader, must give HF's encoder outputs within 1e-5."""
import hashlib
import json

import pytest
import torch
from fairseq import checkpoint_utils

from conftest import run_cli
from refusals import assert_refused

transformers = pytest.importorskip("transformers")

from fairseq_xmodal.models.hf import hf_config  # noqa: E402
from fairseq_xmodal.models.official import SID_HEAD  # noqa: E402
from fairseq_xmodal.models.speecht5 import SpeechT5TinyConfig  # noqa: E402
from fairseq_xmodal.text_vocab import load_text_dictionary  # noqa: E402

TOL = 1e-5


def save_hf(cls, folder, vocab, seed=0, **overrides):
    cfg = hf_config(SpeechT5TinyConfig(max_relative_position=8), vocab, 1, mask_time_prob=0.05, **overrides)
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():  # away from bert-init's near-zero activations, so that every tensor matters (as in parity)
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(10.0)
            elif name.endswith(".bias") or "norm" in name or name.endswith("alpha"):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(folder))
    return model


def import_cli(folder, task, corpus_dir, out):
    return run_cli(["xmodal-import-official", "--checkpoint", str(folder), "--task", task, "--data", corpus_dir,
                    "--out", str(out)], check=False)


@pytest.fixture(scope="module")
def vocab(corpus_dir):
    return len(load_text_dictionary(f"{corpus_dir}/dict.txt"))


def test_hf_speech_folder_imports_strictly_for_s2c_and_matches_hf(tmp_path, corpus_dir, vocab):
    hf = save_hf(transformers.SpeechT5ForSpeechToText, tmp_path / "asr", vocab)
    out = tmp_path / "s2c.pt"
    proc = import_cli(tmp_path / "asr", "s2c", corpus_dir, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.load(open(f"{out}.import.json"))
    assert report["format"] == "transformers" and report["kind"] == "hf:SpeechT5ForSpeechToText"
    hf_keys = {k for k in hf.state_dict() if k.startswith("speecht5.")}  # lm_head is tied, not saved
    assert len(report["loaded"]) + len(report["ignored"]) == len(hf_keys)
    assert set(report["ignored"]) == {"decoder.prenet.embed_tokens.weight"}
    new = set(report["newly_initialised"])
    assert new == {SID_HEAD, "text_encoder_prenet.encoder_prenet.0.weight", "text_encoder_prenet.encoder_prenet.1.alpha"}
    assert all(report["new_reasons"][k] for k in new)

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(out)])
    ours = models[0].eval()
    source = torch.randn(2, 16000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        enc, pad = ours.encode(source=source, padding_mask=torch.zeros_like(source, dtype=torch.bool))
        ref = hf.speecht5.encoder(input_values=source).last_hidden_state
    d = (enc.double() - ref.double()).abs().max().item()
    print(f"max|d| speech encoder (HF folder import) {d:.3g}")
    assert enc.shape == ref.shape and d < TOL and ref.abs().max() > 0.1


def test_hf_text_folder_imports_strictly_for_t2c_and_matches_hf(tmp_path, corpus_dir, vocab):
    hf = save_hf(transformers.SpeechT5ForTextToSpeech, tmp_path / "tts", vocab, speaker_embedding_dim=16)
    out = tmp_path / "t2c.pt"
    proc = import_cli(tmp_path / "tts", "t2c", corpus_dir, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.load(open(f"{out}.import.json"))
    assert "text_encoder_prenet.encoder_prenet.0.weight" in report["loaded"]
    assert all(k == SID_HEAD or k.startswith("speech_encoder_prenet.") for k in report["newly_initialised"])
    assert set(report["ignored"].values()) <= {
        "speech-synthesis postnet",
        "decoder prenet (text embedding or speech-synthesis prenet); the classifier's decoder input is an all-zero vector"}

    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(out)])
    ours = models[0].eval()
    tokens = torch.randint(4, vocab, (3, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        enc, _ = ours.encode(src_tokens=tokens)
        ref = hf.speecht5.encoder(input_values=tokens).last_hidden_state
    d = (enc.double() - ref.double()).abs().max().item()
    print(f"max|d| text encoder (HF folder import) {d:.3g}")
    assert d < TOL and ref.abs().max() > 0.1


def test_hf_speech_folder_for_t2c_uses_the_tied_text_table_and_says_so(tmp_path, corpus_dir, vocab):
    from fairseq_xmodal.checkpoints import load_state
    from fairseq_xmodal.models.hf import import_hf_folder

    hf = save_hf(transformers.SpeechT5ForSpeechToText, tmp_path / "asr", vocab, seed=4)
    report = import_hf_folder(str(tmp_path / "asr"), "t2c", corpus_dir, str(tmp_path / "t2c.pt"))
    assert set(report["newly_initialised"]) == {SID_HEAD, "text_encoder_prenet.encoder_prenet.1.alpha"}
    assert any("ties the text tables" in n for n in report["notes"])
    table = load_state(str(tmp_path / "t2c.pt"))["model"]["text_encoder_prenet.encoder_prenet.0.weight"]
    assert torch.equal(table, hf.speecht5.decoder.prenet.embed_tokens.weight.detach())


def test_hf_folder_refusals_are_one_line(tmp_path, corpus_dir, vocab):
    save_hf(transformers.SpeechT5ForTextToSpeech, tmp_path / "tts", vocab, speaker_embedding_dim=16)
    assert_refused(import_cli(tmp_path / "tts", "s2c", corpus_dir, tmp_path / "a.pt"), tmp_path / "tts",
                   "no speech encoder prenet")
    cfg_path = tmp_path / "tts" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["feat_extract_norm"] = "layer"
    cfg_path.write_text(json.dumps(cfg))
    assert_refused(import_cli(tmp_path / "tts", "t2c", corpus_dir, tmp_path / "b.pt"), cfg_path, "feat_extract_norm")
    (tmp_path / "tts" / "model.safetensors").write_bytes(b"\0" * 10)
    cfg["feat_extract_norm"] = "group"
    cfg_path.write_text(json.dumps(cfg))
    assert_refused(import_cli(tmp_path / "tts", "t2c", corpus_dir, tmp_path / "c.pt"), "model.safetensors")
    assert not any((tmp_path / n).exists() for n in ("a.pt", "b.pt", "c.pt"))


def test_hf_folder_files_are_never_the_output(tmp_path, corpus_dir, vocab):
    save_hf(transformers.SpeechT5ForTextToSpeech, tmp_path / "tts", vocab, speaker_embedding_dim=16)
    files = {n: hashlib.sha256((tmp_path / "tts" / n).read_bytes()).hexdigest()
             for n in ("config.json", "model.safetensors")}
    listing = sorted(p.name for p in (tmp_path / "tts").iterdir())
    for name in files:
        target = tmp_path / "tts" / name
        proc = run_cli(["xmodal-import-official", "--checkpoint", str(tmp_path / "tts"), "--task", "t2c", "--data",
                        corpus_dir, "--out", str(target), "--overwrite"], check=False)
        assert_refused(proc, target, "is an input of this command")
    assert {n: hashlib.sha256((tmp_path / "tts" / n).read_bytes()).hexdigest() for n in files} == files
    assert sorted(p.name for p in (tmp_path / "tts").iterdir()) == listing  # no .import.json beside them either
