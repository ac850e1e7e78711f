"""The one place where official SpeechT5 checkpoints meet this package.

- `IGNORED`: every official key with no place in a classifier, and why (the only keys an import may leave out).
- `write_official_checkpoint`: a randomly initialised checkpoint in the exact official layout (top-level keys, argparse
  Namespaces in cfg, all 464 pretrain keys at base size, tied text embeddings), for tests and the demo.
- `import_official`: official pretrain or SID (s2c) checkpoint -> fairseq_xmodal checkpoint for s2c or t2c, matching
  key for key with shape checks; anything unexpected is an error naming the keys.
- `to_hf_state_dict`: official key -> HF transformers SpeechT5 key (speecht5.md §6), for the parity test/benchmarks.

Our parameter names equal the official ones for everything we load, so the loaded part of the map is the identity.
"""
import argparse
import logging
import os
import re
from typing import Dict, List, Optional, Tuple

import torch
from fairseq.data import Dictionary

from ..checkpoints import build_task_and_model, is_xmodal_checkpoint, load_state, make_cfg, save_checkpoint
from ..files import atomic_torch_save
from ..text_vocab import EXTRA_SYMBOLS, with_extra_symbols
from . import heads
from .speecht5 import SpeechT5Classifier, SpeechT5Config

logger = logging.getLogger(__name__)

IGNORED: List[Tuple[str, str]] = [
    (r"^hubert_layer\.", "HuBERT pretraining head"),
    (r"^quantizer\.", "codebook quantizer (pretraining only)"),
    (r"^speech_decoder_prenet\.", "speech-synthesis decoder prenet"),
    (r"^speech_decoder_postnet\.", "speech-synthesis postnet"),
    (r"^text_decoder_prenet\.", "text decoder embedding (tied to the text encoder embedding); the classifier's "
                                "decoder input is an all-zero vector"),
    (r"^text_decoder_postnet\.", "text LM head (tied to the text encoder embedding)"),
    (r"^encoder\.proj\.", "CTC head: no classifier reads it; the alignment stage takes it from the official file "
                          "itself (criterion.align_ctc_init, docs/methods/alignment.md)"),
    (r"\.norm_k\.", "built but unused by the post-LN base model"),
    (r"^decoder\.pos_emb\.", "decoder relative-position table, never used by the official decoder"),
    (r"\._float_tensor$", "device-placement buffer of sinusoidal positions (no values)"),
    (r"^(encoder|decoder)\.version$", "fairseq version marker"),
]
SID_HEAD = "speaker_decoder_postnet.output_projection.weight"


def ignore_reason(key: str) -> Optional[str]:
    for pattern, reason in IGNORED:
        if re.search(pattern, key):
            return reason
    return None


# ----------------------------------------------------------------------------------------------------------------
# Official argparse names <-> our config


def official_model_args(cfg: SpeechT5Config, **extra) -> argparse.Namespace:
    """The model Namespace an official checkpoint carries (the fields the importer reads, plus the recipe flags)."""
    return argparse.Namespace(
        arch="t5_transformer_base", encoder_embed_dim=cfg.encoder_embed_dim, decoder_embed_dim=cfg.encoder_embed_dim,
        encoder_ffn_embed_dim=cfg.encoder_ffn_embed_dim, decoder_ffn_embed_dim=cfg.decoder_ffn_embed_dim,
        encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.encoder_attention_heads, decoder_attention_heads=cfg.decoder_attention_heads,
        conv_feature_layers=cfg.conv_feature_layers, conv_pos=cfg.conv_pos, conv_pos_groups=cfg.conv_pos_groups,
        encoder_max_relative_position=cfg.max_relative_position, relative_position_embedding=True,
        layer_norm_first=False, encoder_normalize_before=False, decoder_normalize_before=False,
        extractor_mode="default", conv_bias=False, share_input_output_embed=True, use_codebook=True, bert_init=True,
        dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, encoder_layerdrop=0.05, decoder_layerdrop=0.05,
        feature_grad_mult=0.1, spk_embed_dim=512, reduction_factor=2, final_dim=256, latent_vars=100,
        latent_groups=2, **extra,
    )


DIM_FIELDS = ["encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_layers", "encoder_attention_heads",
              "decoder_ffn_embed_dim", "decoder_layers", "decoder_attention_heads", "conv_feature_layers", "conv_pos",
              "conv_pos_groups"]


def model_dims_from_args(args, where: str) -> Dict[str, object]:
    """Structural fields of our config, read from an official model Namespace."""
    missing = [f for f in DIM_FIELDS if not hasattr(args, f)]
    if missing:
        raise ValueError(f"{where}: model args lack {missing}; is this a SpeechT5 checkpoint?")
    if getattr(args, "decoder_embed_dim", args.encoder_embed_dim) != args.encoder_embed_dim:
        raise ValueError(f"{where}: decoder_embed_dim != encoder_embed_dim is not a SpeechT5 layout")
    if getattr(args, "layer_norm_first", False) or getattr(args, "encoder_normalize_before", False):
        raise ValueError(f"{where}: pre-LN SpeechT5 variants are not supported (base is post-LN)")
    dims = {f: getattr(args, f) for f in DIM_FIELDS}
    dims["max_relative_position"] = getattr(args, "encoder_max_relative_position", 160)
    return dims


# ----------------------------------------------------------------------------------------------------------------
# Random checkpoint in the exact official format


def _official_extra_tensors(cfg: SpeechT5Config, vocab: int, g: torch.Generator, pretrain: bool) -> Dict[str, torch.Tensor]:
    """Official keys our model does not build, with official shapes (speecht5.md §1.1)."""
    D, hd = cfg.encoder_embed_dim, cfg.encoder_embed_dim // cfg.encoder_attention_heads
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.02  # noqa: E731
    t = {"encoder.version": torch.tensor([3.0]), "decoder.version": torch.tensor([3.0]),
         "encoder.proj.weight": r(vocab, D), "encoder.proj.bias": torch.zeros(vocab),
         "decoder.pos_emb.pe_k.weight": r(2 * cfg.max_relative_position, hd),
         "speech_encoder_prenet.embed_positions._float_tensor": torch.tensor([0.0]),
         "text_decoder_prenet.embed_positions._float_tensor": torch.tensor([0.0])}
    for side, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        for i in range(n):
            t[f"{side}.layers.{i}.norm_k.weight"], t[f"{side}.layers.{i}.norm_k.bias"] = torch.ones(hd), torch.zeros(hd)
    p = "speech_decoder_prenet.decoder_prenet."
    t.update({p + "0.0.prenet.0.0.weight": r(256, 80), p + "0.0.prenet.0.0.bias": torch.zeros(256),
              p + "0.0.prenet.1.0.weight": r(256, 256), p + "0.0.prenet.1.0.bias": torch.zeros(256),
              p + "0.1.weight": r(D, 256), p + "0.1.bias": torch.zeros(D), p + "1.alpha": torch.tensor(1.0),
              "speech_decoder_prenet.spkembs_layer.0.weight": r(D, 512 + D),
              "speech_decoder_prenet.spkembs_layer.0.bias": torch.zeros(D)})
    p = "speech_decoder_postnet."
    t.update({p + "feat_out.weight": r(160, D), p + "feat_out.bias": torch.zeros(160),
              p + "prob_out.weight": r(2, D), p + "prob_out.bias": torch.zeros(2)})
    for i, (cin, cout) in enumerate([(80, 256), (256, 256), (256, 256), (256, 256), (256, 80)]):
        q = f"{p}postnet.postnet.{i}."
        t.update({q + "0.weight": r(cout, cin, 5), q + "1.weight": torch.ones(cout), q + "1.bias": torch.zeros(cout),
                  q + "1.running_mean": torch.zeros(cout), q + "1.running_var": torch.ones(cout),
                  q + "1.num_batches_tracked": torch.tensor(0, dtype=torch.int64)})
    if pretrain:
        t.update({"hubert_layer.label_embs_concat": r(504, 256), "hubert_layer.final_proj.weight": r(256, D),
                  "hubert_layer.final_proj.bias": torch.zeros(256), "quantizer.vars": torch.rand(1, 200, D // 2, generator=g),
                  "quantizer.weight_proj.weight": r(200, D), "quantizer.weight_proj.bias": torch.zeros(200)})
    return t


def write_official_checkpoint(path: str, cfg: SpeechT5Config, vocab_size: int = 81, seed: int = 1,
                              sid_labels: Optional[List[str]] = None):
    """Pretrain layout by default; with `sid_labels`, an official SID (t5_task=s2c) fine-tuned checkpoint whose text
    dictionary (and class inventory) is the labels: V = C = 4 + len(labels) + 2."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    sid = sid_labels is not None
    vocab = 4 + len(sid_labels) + len(EXTRA_SYMBOLS) if sid else vocab_size
    model = SpeechT5Classifier(cfg, vocab, 1, vocab if sid else 1)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if not sid:
        del sd[SID_HEAD]
    sd.update(_official_extra_tensors(cfg, vocab, g, pretrain=not sid))
    # A pretrained text embedding has the scale of the positional encoding it is added to (+-1); the N(0, 0.02)
    # init would bury tokens under positions and a stand-in for speecht5_base.pt should not be harder to train.
    emb = torch.randn(vocab, cfg.encoder_embed_dim, generator=g)
    emb[1] = 0.0  # padding row
    sd["text_encoder_prenet.encoder_prenet.0.weight"] = emb
    # --share-input-output-embed: three keys, one tensor (torch.save keeps the sharing).
    sd["text_decoder_prenet.embed_tokens.weight"] = emb
    sd["text_decoder_postnet.output_projection.weight"] = emb
    task_args = argparse.Namespace(t5_task="s2c" if sid else "pretrain", data="/path/to/data", sample_rate=16000,
                                   max_speech_positions=8000 if sid else 4000, max_text_positions=600)
    state = {
        "args": None,
        "cfg": {"_name": None, "common": {"seed": 1, "fp16": True}, "task": task_args,
                "model": official_model_args(cfg), "criterion": {"_name": "speecht5"}},
        "model": sd,
        "criterion": None,
        "optimizer_history": [{"criterion_name": "SpeechT5Criterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0 if sid else 300000}],
        "task_state": {},
        "extra_state": {"train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "shuffle": True}},
        "last_optimizer_state": None,
    }
    atomic_torch_save(state, path)
    return state


# ----------------------------------------------------------------------------------------------------------------
# Import


class ImportReport(dict):
    def print(self, out=print):
        out(f"{self.get('format', 'official')} checkpoint: {self['source']}  ({self['kind']}, seed {self.get('seed')})")
        for section in ("loaded", "ignored", "newly_initialised", "mapped_head_rows"):
            items = self.get(section, [])
            out(f"  {section}: {len(items)}")
        groups: Dict[str, int] = {}
        for key, reason in self["ignored"].items():
            groups[reason] = groups.get(reason, 0) + 1
        for reason, n in groups.items():
            out(f"    ignored {n:4d}  {reason}")
        reasons = self.get("new_reasons") or {}
        by_reason: Dict[str, List[str]] = {}
        for key in self["newly_initialised"]:
            by_reason.setdefault(reasons.get(key, ""), []).append(key)
        for reason, keys in by_reason.items():
            what = keys[0] if len(keys) == 1 else f"{len(keys)} keys ({keys[0]}, ...)"
            out(f"    new          {what}" + (f"  ({reason})" if reason else ""))
        for note in self.get("notes") or []:
            out(f"  note: {note}")


def import_official(official_path: str, task_name: str, data: str, out_path: str,
                    sid_dict: Optional[str] = None, text_prenet_from: Optional[str] = None,
                    model_overrides: Optional[dict] = None, seed: int = 1,
                    state: Optional[dict] = None) -> ImportReport:
    """Convert an official checkpoint into a fairseq_xmodal checkpoint for `task_name` over the data folder `data`.

    Pretrain checkpoints: every key is loaded (shape-checked) or on IGNORED; the class head is new.
    SID checkpoints (`sid_dict` = the label dict.txt it was fine-tuned with): the head rows are mapped by label name;
    its text embedding is the label table, not the 81-symbol vocabulary, so the text prenet comes from
    `text_prenet_from` (a pretrain checkpoint) or, if not given, is reported as newly initialised.
    Newly initialised keys are drawn from torch's generator seeded with `seed` (recorded), so two imports of the same
    file are identical. `state`: the already loaded official checkpoint (callers that inspected it pass it, so the
    file is read once).
    """
    if state is None:
        state = load_state(official_path)
    if is_xmodal_checkpoint(state):
        raise ValueError(f"{official_path} is already a fairseq_xmodal checkpoint, not an official one: use "
                         f"xmodal-transfer --source {official_path} to move it to another task")
    cfg_in = state.get("cfg") or {}
    margs = cfg_in.get("model") if isinstance(cfg_in, dict) else None
    margs = margs if margs is not None else state.get("args")
    if margs is None or "model" not in state:
        raise ValueError(f"{official_path}: no model args / state dict found; is this an official SpeechT5 checkpoint?")
    targs = cfg_in.get("task") if isinstance(cfg_in, dict) else None
    t5_task = getattr(targs, "t5_task", None) or getattr(margs, "t5_task", None)
    kind = "sid" if t5_task == "s2c" else "pretrain"
    if kind == "sid" and sid_dict is None:
        raise ValueError(f"{official_path} is an official SID (s2c) checkpoint: pass sid_dict (the dict.txt of labels it "
                         f"was fine-tuned with) so its head rows can be matched to labels by name")

    dims = model_dims_from_args(margs, official_path)
    return import_state_dict(state["model"], dims, kind, official_path, task_name, data, out_path, sid_dict=sid_dict,
                             text_prenet_from=text_prenet_from, model_overrides=model_overrides, seed=seed)


def import_state_dict(official: Dict[str, torch.Tensor], dims: Dict[str, object], kind: str, official_path: str,
                      task_name: str, data: str, out_path: str, sid_dict: Optional[str] = None,
                      text_prenet_from: Optional[str] = None, model_overrides: Optional[dict] = None,
                      seed: int = 1, source_format: str = "official", ignored_before: Optional[Dict[str, str]] = None,
                      allowed_new: Optional[Dict[str, str]] = None, notes: Optional[List[str]] = None) -> ImportReport:
    """The strict accounting of an official-named state dict (from a fairseq checkpoint, or mapped from HF: then
    `ignored_before` holds the HF keys left out and why, `allowed_new` the keys the folder cannot provide and why)."""
    model_cfg = {"_name": "speecht5", **dims, **(model_overrides or {})}
    cfg = make_cfg({"_name": task_name, "data": os.path.abspath(data)}, model_cfg, seed=seed)
    with torch.random.fork_rng(devices=[]):  # the new keys (class head) from a recorded seed; global RNG untouched
        torch.manual_seed(seed)
        task, model = build_task_and_model(cfg)
    ours = model.state_dict()

    loaded, ignored, mismatched, unexpected = [], dict(ignored_before or {}), [], []
    classifier = model.classifier
    head_rows: Dict[str, str] = {}
    new_sd = dict(ours)
    text_key = "text_encoder_prenet.encoder_prenet.0.weight"
    for key, value in official.items():
        if kind == "sid" and key == SID_HEAD and classifier != heads.DECODER_QUERY:
            ignored[key] = (f"SID class head: it reads the decoder's zero-query output, model.classifier={classifier} "
                            f"reads pooled encoder features (newly initialised)")
        elif kind == "sid" and key == SID_HEAD:
            new_sd[key] = _map_sid_head(value, sid_dict, task.class_dictionary, official_path, head_rows)
            loaded.append(key)
        elif kind == "sid" and key.startswith("text_encoder_prenet."):
            ignored[key] = "label-sized text table of a SID checkpoint (the vocabulary is replaced)"
        elif key in ours:
            if tuple(value.shape) != tuple(ours[key].shape):
                mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(ours[key].shape)}")
            else:
                new_sd[key] = value
                loaded.append(key)
        elif heads.unused_key_reason(key, classifier):
            ignored[key] = heads.unused_key_reason(key, classifier)
        elif ignore_reason(key):
            ignored[key] = ignore_reason(key)
        else:
            unexpected.append(key)
    if mismatched and any(k.startswith(text_key) for k in mismatched):
        mismatched.append(f"(text vocabulary: {data}/dict.txt gives {len(task.text_dictionary)} symbols; use the "
                          f"dict.txt the checkpoint was trained with)")
    if unexpected or mismatched:
        raise ValueError(f"{official_path}: cannot import strictly.\n  unexpected keys: {unexpected}\n"
                         f"  shape mismatches: {mismatched}")

    if kind == "sid" and text_prenet_from:
        extra = load_state(text_prenet_from)["model"]
        for key in ("text_encoder_prenet.encoder_prenet.0.weight", "text_encoder_prenet.encoder_prenet.1.alpha"):
            if key not in extra or tuple(extra[key].shape) != tuple(ours[key].shape):
                raise ValueError(f"{text_prenet_from}: {key} missing or of the wrong shape for {data}/dict.txt")
            new_sd[key] = extra[key]
            loaded.append(f"{key} (from {text_prenet_from})")
    loaded_keys = {k.split(" ")[0] for k in loaded}
    new_keys = [k for k in ours if k not in loaded_keys]
    if allowed_new is None:
        allowed_new = {SID_HEAD: "class head (the checkpoint has none)"} if kind == "pretrain" else {
            k: "text prenet of a SID checkpoint (its table is label-sized)" for k in ours
            if k.startswith("text_encoder_prenet.")}
    allowed_new = dict(allowed_new)
    allowed_new.update({k: f"pooler of model.classifier={classifier} (an official model has none)" for k in ours
                        if k.startswith(heads.POOLER_PREFIX)})
    if classifier != heads.DECODER_QUERY:
        allowed_new[SID_HEAD] = f"class head of model.classifier={classifier} (it reads pooled encoder features)"
    surprising = [k for k in new_keys if k not in allowed_new]
    if surprising:
        raise ValueError(f"{official_path}: the model needs keys the checkpoint lacks: {surprising}")

    model.load_state_dict(new_sd, strict=True)
    report = ImportReport(source=os.path.abspath(official_path), format=source_format, kind=kind, task=task_name,
                          loaded=sorted(loaded), ignored=ignored, newly_initialised=new_keys,
                          new_reasons={k: allowed_new[k] for k in new_keys}, mapped_head_rows=head_rows, seed=seed,
                          init=f"newly initialised keys: the model's own init under torch.manual_seed({seed})",
                          notes=list(notes or []))
    save_checkpoint(out_path, cfg, model.state_dict(), task.state.state_dict, provenance={"import_official": dict(report)})
    return report


def _map_sid_head(weight, sid_dict_path, class_dictionary, where, head_rows) -> torch.Tensor:
    sid = with_extra_symbols(Dictionary.load(sid_dict_path))
    if weight.size(0) != len(sid):
        raise ValueError(f"{where}: SID head has {weight.size(0)} rows but {sid_dict_path} (+4 specials, <mask>, "
                         f"<ctc_blank>) gives {len(sid)}: wrong dict.txt for this checkpoint")
    rows = []
    for sym in class_dictionary.symbols:
        idx = sid.index(sym)
        if idx == sid.unk() and sym != "<unk>":
            raise ValueError(f"{where}: label {sym!r} of the class dictionary is not in {sid_dict_path}; the SID model "
                             f"was trained on other labels")
        rows.append(idx)
        head_rows[sym] = sid.symbols[idx]
    return weight[torch.tensor(rows)].clone()
