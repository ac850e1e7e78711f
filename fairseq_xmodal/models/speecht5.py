"""SpeechT5 classifier for s2c and t2c: one model, two input paths, the official SID head.

speech: waveform -> speech_encoder_prenet -> encoder -+
text:   tokens   -> text_encoder_prenet   -> encoder -+-> decoder(one all-zero query) -> head -> logits [B, C]

Both tasks build the same module tree, so a checkpoint of either loads key for key into the other.
"""
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from fairseq.dataclass import FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model

from . import modules


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
    mask_prob: float = field(default=0.0, metadata={"help": "training-time probability of masking a frame span"})
    mask_length: int = field(default=10, metadata={"help": "length of a masked frame span"})
    checkpoint_activations: bool = field(
        default=False, metadata={"help": "recompute encoder layer activations in backward to save memory"}
    )


@dataclass
class SpeechT5TinyConfig(SpeechT5Config):
    """A few-MB SpeechT5 with the same structure, for tests and the demo on CPU."""

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


@register_model("speecht5_base", dataclass=SpeechT5Config)
class SpeechT5Classifier(BaseFairseqModel):
    def __init__(self, cfg: SpeechT5Config, text_vocab_size: int, text_padding_idx: int, num_classes: int):
        super().__init__()
        self.cfg = cfg
        dim = cfg.encoder_embed_dim
        self.speech_encoder_prenet = modules.SpeechEncoderPrenet(cfg)
        self.text_encoder_prenet = modules.TextEncoderPrenet(text_vocab_size, dim, text_padding_idx, cfg.dropout)
        self.encoder = modules.Encoder(cfg)
        self.decoder = modules.Decoder(cfg)
        self.speaker_decoder_postnet = modules.ClassHead(dim, num_classes)
        for m in self.modules():
            if not isinstance(m, nn.Conv1d):  # convs keep their own (kaiming / wav2vec2 pos_conv) init
                init_bert_params(m)

    @classmethod
    def build_model(cls, cfg, task):
        return cls(cfg, len(task.text_dictionary), task.text_dictionary.pad(), task.class_dictionary.num_outputs)

    def encode(self, source=None, padding_mask=None, src_tokens=None, src_lengths=None):
        """Either modality -> (encoder output [B,T,D], padding mask [B,T])."""
        if source is not None:
            x, pad = self.speech_encoder_prenet(source, padding_mask)
        elif src_tokens is not None:
            x, pad = self.text_encoder_prenet(src_tokens)
        else:
            raise ValueError("net_input needs `source` (+ `padding_mask`) for speech or `src_tokens` for text")
        return self.encoder(x, pad), pad

    def forward(self, source=None, padding_mask=None, src_tokens=None, src_lengths=None, **unused):
        """-> class logits [B, num_classes]. The decoder sees one all-zero query, the official SID "[CLS]"."""
        enc, pad = self.encode(source, padding_mask, src_tokens, src_lengths)
        query = enc.new_zeros(enc.size(0), 1, enc.size(2))
        dec = self.decoder(query, enc, pad)  # [B,1,D]
        return self.speaker_decoder_postnet(dec[:, 0])

    def max_positions(self):
        return None


@register_model("speecht5_tiny", dataclass=SpeechT5TinyConfig)
class SpeechT5TinyClassifier(SpeechT5Classifier):
    """Same model, tiny defaults (a separate registry entry so dims come from the dataclass, not an arch hook)."""
