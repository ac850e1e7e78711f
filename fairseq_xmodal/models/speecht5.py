"""SpeechT5 classifier for s2c and t2c: one model, two input paths, the official SID head.

speech: waveform -> speech_encoder_prenet -> encoder -+
text:   tokens   -> text_encoder_prenet   -> encoder -+-> decoder(one all-zero query) -> head -> logits [B, C]

model.classifier picks what the head reads (models/heads.py): the official decoder query above (default), or pooled
encoder output (encoder_mean, encoder_attentive, layer_weighted; no decoder is built). Both tasks build the same
module tree, so a checkpoint of either loads key for key into the other.
"""
from contextlib import nullcontext
from dataclasses import MISSING, dataclass, field, fields
from typing import List, Optional

import torch
import torch.nn as nn
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import ARCH_MODEL_NAME_REGISTRY, BaseFairseqModel, register_model, register_model_architecture

from ..modalities import SPEECH, TEXT
from . import freezing, heads, modules


@dataclass
class SpeechT5Config(FairseqDataclass):
    """Defaults are the official base dimensions and the SID README fine-tuning recipe."""

    encoder_embed_dim: int = field(default=768, metadata={"help": "model dimension (encoder and decoder)"})
    encoder_ffn_embed_dim: int = field(default=3072, metadata={"help": "encoder feed-forward dimension"})
    encoder_layers: int = field(default=12, metadata={"help": "number of encoder layers"})
    encoder_attention_heads: int = field(default=12, metadata={"help": "encoder attention heads"})
    decoder_ffn_embed_dim: int = field(default=3072, metadata={"help": "decoder feed-forward dimension"})
    decoder_layers: int = field(default=6, metadata={"help": "number of decoder layers"})
    decoder_attention_heads: int = field(default=12, metadata={"help": "decoder attention heads"})
    conv_feature_layers: str = field(
        default="[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2",
        metadata={"help": "conv feature extractor as a python list of (dim, kernel, stride)"},
    )
    conv_pos: int = field(default=128, metadata={"help": "kernel of the convolutional positional embedding"})
    conv_pos_groups: int = field(default=16, metadata={"help": "groups of the convolutional positional embedding"})
    max_relative_position: int = field(default=160, metadata={"help": "encoder relative positions are clamped to +-this"})
    dropout: float = field(default=0.1, metadata={"help": "dropout after prenets, attention and feed-forward blocks"})
    attention_dropout: float = field(default=0.1, metadata={"help": "dropout on attention probabilities"})
    activation_dropout: float = field(default=0.1, metadata={"help": "dropout after the feed-forward activation"})
    encoder_layerdrop: float = field(default=0.05, metadata={"help": "probability of skipping an encoder layer"})
    decoder_layerdrop: float = field(default=0.1, metadata={"help": "probability of skipping a decoder layer"})
    feature_grad_mult: float = field(
        default=1.0, metadata={"help": "gradient scale into the conv feature extractor; 0 freezes it (no_grad)"}
    )
    feature_padding: ChoiceEnum(["masked", "official"]) = field(
        default="masked",
        metadata={"help": "speech rows of a zero-padded batch. masked: the first conv GroupNorm normalises over each "
                          "utterance's real samples, padded frames are zeroed before pos_conv and the frame mask comes "
                          "from the conv lengths, so a row's output equals the utterance alone (batch-size "
                          "independent). official: the official code's behaviour (statistics over the padding too). "
                          "Identical without padding"},
    )
    mask_prob: float = field(default=0.0, metadata={"help": "training-time probability of masking a frame span"})
    mask_length: int = field(default=10, metadata={"help": "length of a masked frame span"})
    checkpoint_activations: bool = field(
        default=False,
        metadata={"help": "training: keep only the inputs of each encoder layer and each conv feature-extractor block "
                          "and recompute the rest in backward (less memory, about a third more compute)"},
    )
    freeze: List[str] = field(
        default_factory=list,
        metadata={"help": "what to freeze, e.g. [speech_prenet,encoder] or [encoder.layers.0,decoder]: module groups "
                          "speech_prenet, text_prenet, encoder, decoder, head; `prenet` (the task's own); "
                          "encoder.layers.I, .I-J, .first, .middle, .last, .all; encoder.rest (likewise decoder). With "
                          "freeze_updates=0 their parameters get requires_grad=False (the optimizer never sees them); "
                          "frozen groups at the start of the forward path run under torch.no_grad, so their backward "
                          "is skipped. Dropout stays active in frozen groups (train mode). docs/methods/freezing.md"},
    )
    freeze_updates: int = field(
        default=0,
        metadata={"help": "0: model.freeze holds for the whole run. N > 0: model.freeze holds only for updates 0..N-1 "
                          "(the parameters stay in the optimizer; their gradients are dropped), then they train"},
    )
    embedder_warmup_updates: int = field(
        default=0,
        metadata={"help": "N > 0: embedder warm-up. Stage 1 (updates 0..N-1) trains only model.warmup_trainable, the "
                          "rest is held as with freeze_updates; stage 2 trains everything not frozen. The model "
                          "attribute in_embedder_warmup tells which stage a step is in. docs/methods/embedder_warmup.md"},
    )
    warmup_trainable: List[str] = field(
        default_factory=lambda: ["prenet", "pooler", "head"],
        metadata={"help": "what trains in warm-up stage 1 (selectors as in model.freeze); `prenet` is the task's own "
                          "prenet: speech_prenet for s2c, text_prenet for t2c; `pooler` holds the new parameters of "
                          "model.classifier=encoder_attentive / layer_weighted (none for the other heads)"},
    )
    classifier: ChoiceEnum(heads.CLASSIFIERS) = field(
        default=heads.DECODER_QUERY,
        metadata={"help": "what the class head reads: decoder_query = the official SID path (the decoder attends "
                          "from one all-zero query); encoder_mean = masked mean of the encoder output; "
                          "encoder_attentive = one learned attention-pooling query over the encoder output; "
                          "layer_weighted = masked mean of a learned softmax-weighted sum of the encoder input and "
                          "its layer outputs. The encoder_* and layer_weighted heads build no decoder; their "
                          "parameters are the module group `pooler`. docs/methods/classifier_heads.md"},
    )


@dataclass
class SpeechT5TinyConfig(SpeechT5Config):
    """A few-MB SpeechT5 with the same structure, for tests and the demo on CPU: the preset of
    config/model/speecht5_tiny.yaml (tests/test_configs.py keeps the two equal), not a registered model."""

    encoder_embed_dim: int = 64
    encoder_ffn_embed_dim: int = 128
    encoder_layers: int = 2
    encoder_attention_heads: int = 4
    decoder_ffn_embed_dim: int = 128
    decoder_layers: int = 2
    decoder_attention_heads: int = 4
    conv_feature_layers: str = "[(64,10,5)] + [(64,3,2)] * 4 + [(64,2,2)] * 2"
    conv_pos: int = 16
    conv_pos_groups: int = 4
    encoder_layerdrop: float = 0.0
    decoder_layerdrop: float = 0.0


# the order in which each input modality passes through the module groups (selectors.GROUPS) after its prenet
AFTER_PRENET = ("encoder", "decoder", "head")  # decoder_query; the encoder heads: encoder, pooler, head


def init_bert_params(module: nn.Module):
    """The official --bert-init: N(0, 0.02) linears and embeddings, zero biases and padding rows."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


@register_model("speecht5", dataclass=SpeechT5Config)
class SpeechT5Classifier(freezing.StagedFreezing, BaseFairseqModel):
    """Freezing and training stages (set_frozen, set_num_updates, in_embedder_warmup, ...): models/freezing.py."""

    AFTER_PRENET = AFTER_PRENET

    def __init__(self, cfg: SpeechT5Config, text_vocab_size: int, text_padding_idx: int, num_classes: int,
                 target_prenet: Optional[str] = None):
        super().__init__()
        self.cfg = cfg
        dim = cfg.encoder_embed_dim
        self.speech_encoder_prenet = modules.SpeechEncoderPrenet(cfg)
        self.text_encoder_prenet = modules.TextEncoderPrenet(text_vocab_size, dim, text_padding_idx, cfg.dropout)
        self.encoder = modules.Encoder(cfg)
        self.classifier = heads.classifier_of(cfg)
        # None for the encoder heads: no decoder parameters, keys or compute
        self.decoder = modules.Decoder(cfg) if heads.builds_decoder(self.classifier) else None
        self.speaker_decoder_postnet = modules.ClassHead(dim, num_classes)
        # parameters only for encoder_attentive / layer_weighted (none, hence no keys, for decoder_query)
        self.pooler = heads.Pooler(self.classifier, dim, cfg.encoder_layers + 1)
        self.AFTER_PRENET = AFTER_PRENET if self.decoder is not None else ("encoder", "pooler", "head")
        for m in self.modules():
            if not isinstance(m, nn.Conv1d):  # convs keep their own (kaiming / wav2vec2 pos_conv) init
                init_bert_params(m)
        # model.freeze / freeze_updates / embedder_warmup_updates; target_prenet: the task's own prenet group
        self.init_stages(cfg, target_prenet)

    def _no_grad_stages(self, speech: bool) -> int:
        """How many leading stages of the path (prenet, encoder, decoder, head) are frozen, hence need no backward."""
        n = 0
        for group in ((SPEECH if speech else TEXT).prenet,) + self.AFTER_PRENET:
            empty = group == "pooler" and not any(True for _ in self.pooler.parameters())
            if group not in self.no_grad_groups and not empty:  # frozen, or held at this update (freezing.py)
                break
            n += 1
        return n

    @classmethod
    def build_model(cls, cfg, task):
        return cls(cfg, len(task.text_dictionary), task.text_dictionary.pad(), task.class_dictionary.num_outputs,
                   target_prenet=getattr(task, "target_prenet", None))

    def encode(self, source=None, padding_mask=None, src_tokens=None, src_lengths=None, return_layers=False):
        """Either modality -> (encoder output [B,T,D], padding mask [B,T]); with return_layers also the L+1 encoder
        states (modules.Encoder) as a third item."""
        if source is None and src_tokens is None:
            raise ValueError("net_input needs `source` (+ `padding_mask`) for speech or `src_tokens` for text")
        skip = self._no_grad_stages(speech=source is not None)
        with torch.no_grad() if skip >= 1 else nullcontext():
            if source is not None:
                x, pad = self.speech_encoder_prenet(source, padding_mask)
            else:
                x, pad = self.text_encoder_prenet(src_tokens)
        with torch.no_grad() if skip >= 2 else nullcontext():
            if return_layers:
                enc, layers = self.encoder(x, pad, return_layers=True)
                return enc, pad, layers
            return self.encoder(x, pad), pad

    def needs_layers(self, features="classifier") -> bool:
        """Whether pooling `features` reads the encoder's layer outputs (only this model's layer_weighted head)."""
        return features == "classifier" and self.pooler.needs_layers

    def encode_pooled(self, net_input, features="classifier"):
        """One batch's net_input -> (pooled [B,D], encoder output [B,T,D], padding mask [B,T]): the one way the probe,
        the alignment stage and retrieval read features, so every head (layer_weighted too) pools as in forward."""
        net = {k: v for k, v in net_input.items() if k != "src_lengths"}
        enc, pad, *layers = self.encode(**net, return_layers=self.needs_layers(features))
        return self.pool(enc, pad, layers[0] if layers else None, features=features), enc, pad

    def pool(self, enc, pad, layers=None, features="classifier", params=None):
        """The one pooling entry point (model, probe, MoNA): enc [B,T,D], pad [B,T] -> [B,D].
        features: `classifier` = what this model's head reads; `encoder_mean`; `decoder` (the zero query).
        params: optional full-name -> tensor substitutes for decoder./pooler. parameters (MoNA's simulated update)."""
        kind = self.classifier if features == "classifier" else {"decoder": heads.DECODER_QUERY}.get(features, features)
        if kind == heads.DECODER_QUERY and self.decoder is None:
            raise ValueError(f"decoder features: model.classifier={self.classifier} builds no decoder; use "
                             f"encoder_mean or classifier features")
        decoder = _substituted(self.decoder, heads.DECODER_PREFIX, params)
        if kind == self.classifier:
            return _substituted(self.pooler, heads.POOLER_PREFIX, params)(enc, pad, layers, decoder)
        if kind == "encoder_mean":
            return heads.masked_mean(enc, pad)[0]
        if kind == heads.DECODER_QUERY:
            return heads.zero_query(decoder, enc, pad)
        raise ValueError(f"{features} features need the {kind} classifier's parameters; this model has "
                         f"model.classifier={self.classifier}")

    def forward(self, source=None, padding_mask=None, src_tokens=None, src_lengths=None, **unused):
        """-> class logits [B, num_classes]. decoder_query: the decoder sees one all-zero query, the official SID
        "[CLS]"; the encoder heads pool the encoder output (models/heads.py)."""
        skip = self._no_grad_stages(speech=source is not None)
        if skip == len(self.AFTER_PRENET) + 1 and self.training and torch.is_grad_enabled():
            raise ValueError(f"{sorted(self.no_grad_groups)} are frozen or held at update {self.num_updates}: every "
                             f"module this input passes through, nothing to train (model.freeze, freeze_updates, "
                             f"warmup_trainable)")
        enc, pad, *layers = self.encode(source, padding_mask, src_tokens, src_lengths,
                                        return_layers=self.pooler.needs_layers)
        with torch.no_grad() if skip >= 3 else nullcontext():
            pooled = self.pool(enc, pad, layers[0] if layers else None)  # [B,D]
        return self.speaker_decoder_postnet(pooled)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        if strict:
            heads.check_loadable(state_dict, self.classifier)
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)

    def max_positions(self):
        return None


def _substituted(module, prefix, params):
    """`module`, or a callable running it with the `prefix`-named entries of params substituted (functional_call)."""
    sub = {n[len(prefix):]: p for n, p in (params or {}).items() if n.startswith(prefix)}
    if module is None or not sub:
        return module
    return lambda *args: torch.func.functional_call(module, sub, args)


def _legacy_size(preset):
    """Architecture function of a pre-0.2 model name: fill what the cfg lacks from that size's preset."""
    def fill(cfg):
        for f in fields(preset):
            if f.name != "_name" and not hasattr(cfg, f.name):
                default = f.default_factory() if f.default_factory is not MISSING else f.default
                setattr(cfg, f.name, default)
    return fill


# One model, `speecht5`; its sizes are presets (config/model/speecht5_base.yaml, speecht5_tiny.yaml). Before, each
# size was a registered model, so checkpoints written then carry cfg.model._name = speecht5_base / speecht5_tiny:
# these stay loadable as architectures of `speecht5` (fairseq builds ARCH_MODEL_REGISTRY names with the model class
# and calls the architecture function on the cfg; a checkpoint's cfg holds every field, so nothing is filled).
# fairseq's add_defaults would merge the name's *model* dataclass, i.e. the base dims, into a hand-written
# {_name: speecht5_tiny}; dropping the name -> model entry leaves such a cfg to the architecture function, which fills
# it from the right preset.
for _name, _preset in (("speecht5_base", SpeechT5Config), ("speecht5_tiny", SpeechT5TinyConfig)):
    register_model_architecture("speecht5", _name)(_legacy_size(_preset))
    ARCH_MODEL_NAME_REGISTRY.pop(_name)
