"""The one place where HF transformers' SpeechT5 meets this package (speecht5.md §6).

- `to_hf_key`: official key (= ours) -> key of HF `SpeechT5Model` (no "speecht5." prefix), the official<->HF table.
- `hf_config`: our model config -> an equivalent `transformers.SpeechT5Config` (parity test, benchmarks);
  `dims_from_hf_config` the reverse, for an HF folder's config.json.
- `import_hf_folder`: a transformers-format folder (config.json + model.safetensors, from `save_pretrained`, e.g.
  microsoft/speecht5_asr saved locally) -> fairseq_xmodal checkpoint, with the same strict accounting as an official
  checkpoint (official.import_state_dict). Nothing is fetched from a hub; safetensors cannot carry code.

transformers itself is needed only by `hf_config`; reading a folder needs json and safetensors.
"""
import json
import os
import re
from typing import Dict, List, Optional, Tuple

from .conv_spec import parse_conv_layers

_HF_RULES = [
    (r"^speech_encoder_prenet\.feature_extractor\.conv_layers\.0\.2\.", "encoder.prenet.feature_encoder.conv_layers.0.layer_norm."),
    (r"^speech_encoder_prenet\.feature_extractor\.conv_layers\.(\d+)\.0\.", r"encoder.prenet.feature_encoder.conv_layers.\1.conv."),
    (r"^speech_encoder_prenet\.layer_norm\.", "encoder.prenet.feature_projection.layer_norm."),
    (r"^speech_encoder_prenet\.post_extract_proj\.", "encoder.prenet.feature_projection.projection."),
    (r"^speech_encoder_prenet\.pos_conv\.0\.weight_g$", "encoder.prenet.pos_conv_embed.conv.parametrizations.weight.original0"),
    (r"^speech_encoder_prenet\.pos_conv\.0\.weight_v$", "encoder.prenet.pos_conv_embed.conv.parametrizations.weight.original1"),
    (r"^speech_encoder_prenet\.pos_conv\.0\.bias$", "encoder.prenet.pos_conv_embed.conv.bias"),
    (r"^speech_encoder_prenet\.mask_emb$", "encoder.prenet.masked_spec_embed"),
    (r"^text_encoder_prenet\.encoder_prenet\.0\.", "encoder.prenet.embed_tokens."),
    (r"^text_encoder_prenet\.encoder_prenet\.1\.alpha$", "encoder.prenet.encode_positions.alpha"),
    (r"^encoder\.layers\.(\d+)\.self_attn\.", r"encoder.wrapped_encoder.layers.\1.attention."),
    (r"^encoder\.layers\.(\d+)\.self_attn_layer_norm\.", r"encoder.wrapped_encoder.layers.\1.layer_norm."),
    (r"^encoder\.layers\.(\d+)\.fc1\.", r"encoder.wrapped_encoder.layers.\1.feed_forward.intermediate_dense."),
    (r"^encoder\.layers\.(\d+)\.fc2\.", r"encoder.wrapped_encoder.layers.\1.feed_forward.output_dense."),
    (r"^encoder\.layers\.(\d+)\.final_layer_norm\.", r"encoder.wrapped_encoder.layers.\1.final_layer_norm."),
    (r"^encoder\.layer_norm\.", "encoder.wrapped_encoder.layer_norm."),
    (r"^encoder\.pos_emb\.pe_k\.", "encoder.wrapped_encoder.embed_positions.pe_k."),
    (r"^decoder\.layers\.(\d+)\.fc1\.", r"decoder.wrapped_decoder.layers.\1.feed_forward.intermediate_dense."),
    (r"^decoder\.layers\.(\d+)\.fc2\.", r"decoder.wrapped_decoder.layers.\1.feed_forward.output_dense."),
    (r"^decoder\.layers\.(\d+)\.", r"decoder.wrapped_decoder.layers.\1."),
]
# Older transformers saved weight-normed convs as weight_g/weight_v; newer as parametrizations.original0/1.
_HF_LEGACY_SPELLINGS = [(r"\.conv\.weight_g$", ".conv.parametrizations.weight.original0"),
                        (r"\.conv\.weight_v$", ".conv.parametrizations.weight.original1")]
# HF keys with no place in a classifier, and why (the only HF keys an import may leave out).
HF_IGNORED = [
    (r"^decoder\.prenet\.", "decoder prenet (text embedding or speech-synthesis prenet); the classifier's decoder "
                            "input is an all-zero vector"),
    (r"^text_decoder_postnet\.", "text LM head"),
    (r"^speech_decoder_postnet\.", "speech-synthesis postnet"),
]
TEXT_TABLE = "text_encoder_prenet.encoder_prenet.0.weight"
TEXT_ALPHA = "text_encoder_prenet.encoder_prenet.1.alpha"
HF_DECODER_TEXT_TABLE = "decoder.prenet.embed_tokens.weight"
MASK_EMB = "speech_encoder_prenet.mask_emb"


def to_hf_key(key: str) -> Optional[str]:
    """Official key -> key of HF `SpeechT5Model` (no "speecht5." prefix), or None where HF has no counterpart."""
    for pattern, repl in _HF_RULES:
        if re.search(pattern, key):
            return re.sub(pattern, repl, key)
    return None


def hf_config(cfg, vocab_size: int, pad_token_id: int = 1, **overrides):
    """Our SpeechT5Config -> transformers.SpeechT5Config with the same structure, all dropout off."""
    import transformers

    layers = parse_conv_layers(cfg.conv_feature_layers, "the model config")
    zero = dict(positional_dropout=0.0, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                feat_proj_dropout=0.0, speech_decoder_prenet_dropout=0.0, speech_decoder_postnet_dropout=0.0,
                encoder_layerdrop=0.0, decoder_layerdrop=0.0)
    kw = dict(
        vocab_size=vocab_size, pad_token_id=pad_token_id, hidden_size=cfg.encoder_embed_dim,
        encoder_layers=cfg.encoder_layers, encoder_attention_heads=cfg.encoder_attention_heads,
        encoder_ffn_dim=cfg.encoder_ffn_embed_dim, decoder_layers=cfg.decoder_layers,
        decoder_attention_heads=cfg.decoder_attention_heads, decoder_ffn_dim=cfg.decoder_ffn_embed_dim,
        conv_dim=[d for d, _, _ in layers], conv_kernel=[k for _, k, _ in layers],
        conv_stride=[s for _, _, s in layers],
        conv_bias=False, feat_extract_norm="group", feat_extract_activation="gelu", hidden_act="gelu",
        num_conv_pos_embeddings=cfg.conv_pos, num_conv_pos_embedding_groups=cfg.conv_pos_groups,
        encoder_max_relative_position=cfg.max_relative_position, layer_norm_eps=1e-5, scale_embedding=False,
        mask_time_prob=0.0, mask_feature_prob=0.0, use_cache=False, **zero,
    )
    kw.update(overrides)
    return transformers.SpeechT5Config(**kw)


# What our model computes and an HF config may change: field -> the only value we implement.
_FIXED = {"feat_extract_norm": "group", "conv_bias": False, "feat_extract_activation": "gelu", "hidden_act": "gelu",
          "scale_embedding": False}


def dims_from_hf_config(config: dict, where: str) -> Dict[str, object]:
    """An HF SpeechT5 config.json -> the structural fields of our config; anything we do not implement is an error."""
    if config.get("model_type") != "speecht5":
        raise ValueError(f"{where}: model_type {config.get('model_type')!r} is not a SpeechT5 (expected 'speecht5')")
    need = ["hidden_size", "encoder_ffn_dim", "encoder_layers", "encoder_attention_heads", "decoder_ffn_dim",
            "decoder_layers", "decoder_attention_heads", "conv_dim", "conv_kernel", "conv_stride",
            "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "encoder_max_relative_position"]
    missing = [k for k in need if k not in config]
    if missing:
        raise ValueError(f"{where}: config.json lacks {missing}; is it a transformers SpeechT5 config?")
    for field, value in _FIXED.items():
        if config.get(field, value) != value:
            raise ValueError(f"{where}: {field}={config[field]!r} is not the official SpeechT5 architecture "
                             f"(this package implements {field}={value!r})")
    if abs(float(config.get("layer_norm_eps", 1e-5)) - 1e-5) > 1e-12:
        raise ValueError(f"{where}: layer_norm_eps={config['layer_norm_eps']} (the official model uses 1e-5)")
    dims, kernels, strides = config["conv_dim"], config["conv_kernel"], config["conv_stride"]
    if not (len(dims) == len(kernels) == len(strides)) or not dims:
        raise ValueError(f"{where}: conv_dim, conv_kernel and conv_stride must have the same non-zero length")
    spec = "[" + ", ".join(f"({int(d)}, {int(k)}, {int(s)})" for d, k, s in zip(dims, kernels, strides)) + "]"
    parse_conv_layers(spec, where)  # the same limits as for a checkpoint's string
    return {"encoder_embed_dim": config["hidden_size"], "encoder_ffn_embed_dim": config["encoder_ffn_dim"],
            "encoder_layers": config["encoder_layers"], "encoder_attention_heads": config["encoder_attention_heads"],
            "decoder_ffn_embed_dim": config["decoder_ffn_dim"], "decoder_layers": config["decoder_layers"],
            "decoder_attention_heads": config["decoder_attention_heads"], "conv_feature_layers": spec,
            "conv_pos": config["num_conv_pos_embeddings"], "conv_pos_groups": config["num_conv_pos_embedding_groups"],
            "max_relative_position": config["encoder_max_relative_position"]}


def is_hf_folder(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")) and \
        os.path.isfile(os.path.join(path, "model.safetensors"))


def read_hf_folder(folder: str) -> Tuple[dict, Dict[str, object]]:
    """(config.json, {HF key without "speecht5.": tensor}); both files are data only."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg_path, weights = os.path.join(folder, "config.json"), os.path.join(folder, "model.safetensors")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            config = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{cfg_path} is not valid JSON ({e}); save the model again with save_pretrained") from None
    try:
        tensors = load_file(weights)
    except (SafetensorError, ValueError, OSError) as e:
        raise ValueError(f"{weights} is not a readable safetensors file ({e}); copy it again") from None
    sd = {}
    for key, value in tensors.items():
        bare = key[len("speecht5."):] if key.startswith("speecht5.") else key
        for pattern, repl in _HF_LEGACY_SPELLINGS:
            bare = re.sub(pattern, repl, bare)
        sd[bare] = value
    return config, sd


def import_hf_folder(folder: str, task_name: str, data: str, out_path: str, seed: int = 1,
                     model_overrides: Optional[dict] = None):
    """HF SpeechT5 folder -> fairseq_xmodal checkpoint for `task_name`; returns the import report (official.py).
    model_overrides: model config fields of the result, e.g. {"classifier": "encoder_mean"}."""
    from ..checkpoints import build_task_and_model, make_cfg
    from .official import SID_HEAD, import_state_dict

    config, hf_sd = read_hf_folder(folder)
    where = os.path.join(folder, "config.json")
    dims = dims_from_hf_config(config, where)
    # Our key names for this architecture: built once on the meta device (no memory, no RNG draw).
    import torch

    with torch.device("meta"):
        _, probe = build_task_and_model(make_cfg({"_name": task_name, "data": os.path.abspath(data)},
                                                 {"_name": "speecht5", **dims}))
    ours = list(probe.state_dict())
    hf_to_ours = {to_hf_key(k): k for k in ours if to_hf_key(k)}

    speech_encoder = any(k.startswith("encoder.prenet.feature_encoder.") for k in hf_sd)
    text_encoder = "encoder.prenet.embed_tokens.weight" in hf_sd
    arch = (config.get("architectures") or ["SpeechT5Model"])[0]
    official: Dict[str, object] = {}
    ignored: Dict[str, str] = {}
    unexpected: List[str] = []
    notes: List[str] = []
    for key, value in hf_sd.items():
        if key in hf_to_ours:
            official[hf_to_ours[key]] = value
            continue
        reason = next((r for p, r in HF_IGNORED if re.search(p, key)), None)
        if reason is None:
            unexpected.append(key)
        else:
            ignored[key] = reason
    if unexpected:
        raise ValueError(f"{folder}: cannot import strictly: HF keys with no counterpart: {unexpected}")

    allowed_new = {SID_HEAD: "class head (HF SpeechT5 has none)"}
    if MASK_EMB not in official:
        allowed_new[MASK_EMB] = "HF saves masked_spec_embed only with mask_time_prob > 0; used only with model.mask_prob > 0"
    other = [k for k in ours if k.startswith("text_encoder_prenet." if speech_encoder else "speech_encoder_prenet.")]
    if task_name == "t2c" and not text_encoder:
        if HF_DECODER_TEXT_TABLE not in hf_sd:
            raise ValueError(f"{folder} ({arch}) has no text encoder prenet and no decoder text table: t2c needs a "
                             f"text embedding; use a text-input SpeechT5 (e.g. SpeechT5ForTextToSpeech) folder")
        # SpeechT5 ties the text tables (--share-input-output-embed): the decoder's table is the encoder's.
        official[TEXT_TABLE] = hf_sd[HF_DECODER_TEXT_TABLE]
        ignored.pop(HF_DECODER_TEXT_TABLE, None)
        allowed_new[TEXT_ALPHA] = "the text positional scale exists only in a text-encoder SpeechT5 (init 1.0)"
        notes.append(f"text embedding taken from {HF_DECODER_TEXT_TABLE} (SpeechT5 ties the text tables); the "
                     f"positional scale alpha starts at 1.0")
        other = [k for k in other if k not in (TEXT_TABLE, TEXT_ALPHA)]
    elif task_name == "s2c" and not speech_encoder:
        raise ValueError(f"{folder} ({arch}) has no speech encoder prenet: s2c needs one; use a speech-input SpeechT5 "
                         f"(e.g. SpeechT5ForSpeechToText, microsoft/speecht5_asr) folder")
    for key in other:
        allowed_new[key] = (f"the {'text' if speech_encoder else 'speech'} prenet: {arch} has one encoder prenet "
                            f"and {task_name} does not use this one")
    return import_state_dict(official, dims, f"hf:{arch}", folder, task_name, data, out_path, seed=seed,
                             source_format="transformers", ignored_before=ignored, allowed_new=allowed_new,
                             notes=notes)
