"""SpeechT5 building blocks, re-implemented. Attribute names follow the official state-dict keys because
`speecht5_base.pt` must load into them unchanged; see official.py for the complete key map.

Shapes: B batch, S audio samples, T frames/tokens, D model dim, H heads, K = 2 * max_relative_position.
"""
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .conv_features import ConvFeatureExtractor, GeluModule, conv_lengths, frame_padding_mask, gelu_fp32  # noqa: F401
from .conv_spec import parse_conv_layers


class GradMultiply(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class SamePad(nn.Module):
    """Drops the last frame of an even-kernel convolution so the output keeps the input length."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x):
        return x[:, :, : -self.remove] if self.remove else x


def sinusoidal_positions(non_pad: torch.Tensor, dim: int) -> torch.Tensor:
    """fairseq SinusoidalPositionalEmbedding with padding_idx=1: real frames get positions 2,3,..., pads get zeros.
    Layout [sin | cos], frequency exp(-i * ln(10000) / (half - 1)). non_pad: [B,T] bool -> [B,T,dim]."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32, device=non_pad.device) * -(math.log(10000.0) / (half - 1)))
    pos = (torch.cumsum(non_pad.long(), dim=1) + 1).float()  # padding_idx + cumsum
    angles = pos.unsqueeze(-1) * freq  # [B,T,half]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb * non_pad.unsqueeze(-1).to(emb.dtype)


class SpeechEncoderPrenet(nn.Module):
    """waveform -> conv features -> LN -> proj -> dropout -> [time mask] -> + conv positions -> + sinusoid."""

    def __init__(self, cfg):
        super().__init__()
        layers = parse_conv_layers(cfg.conv_feature_layers, "the model config")  # parsed, never eval'd
        conv_dim, dim = layers[-1][0], cfg.encoder_embed_dim
        self.feature_extractor = ConvFeatureExtractor(layers)
        self.feature_extractor.checkpoint_activations = cfg.checkpoint_activations
        self.layer_norm = nn.LayerNorm(conv_dim)
        self.post_extract_proj = nn.Linear(conv_dim, dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.feature_grad_mult = cfg.feature_grad_mult
        self.feature_padding = cfg.feature_padding
        self.mask_prob, self.mask_length = cfg.mask_prob, cfg.mask_length
        self.mask_emb = nn.Parameter(torch.empty(dim).uniform_())
        conv = nn.Conv1d(dim, dim, cfg.conv_pos, padding=cfg.conv_pos // 2, groups=cfg.conv_pos_groups)
        std = math.sqrt(4 / (cfg.conv_pos * dim))
        nn.init.normal_(conv.weight, mean=0, std=std)
        nn.init.constant_(conv.bias, 0)
        # Legacy weight_norm on purpose: it yields the checkpoint's `weight_g`/`weight_v` parameter names.
        conv = nn.utils.weight_norm(conv, name="weight", dim=2)
        self.pos_conv = nn.Sequential(conv, SamePad(cfg.conv_pos), GeluModule())

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor]):
        """source [B,S] float, padding_mask [B,S] True=pad -> (x [B,T,D], frame padding mask [B,T]).

        feature_padding=official: the first GroupNorm, pos_conv and the frame mask see the zero padding as the
        official code does (a row's output depends on the batch). masked: statistics over each row's real samples,
        padded frames zeroed before pos_conv, frame mask from the conv lengths: every row equals the utterance alone.
        Without padding both modes compute the same thing."""
        lengths = None
        if self.feature_padding == "masked" and padding_mask is not None and padding_mask.any():
            lengths = (~padding_mask).sum(1)  # [B]; speech batches are right-padded
        if self.feature_grad_mult > 0:
            feats = self.feature_extractor(source, lengths)
            if self.feature_grad_mult != 1.0:
                feats = GradMultiply.apply(feats, self.feature_grad_mult)
        else:
            with torch.no_grad():
                feats = self.feature_extractor(source, lengths)
        x = self.layer_norm(feats.transpose(1, 2))  # [B,T,C]
        if padding_mask is None:
            padding_mask = torch.zeros(source.shape, dtype=torch.bool, device=source.device)
        if lengths is not None:
            frames = conv_lengths(lengths, self.feature_extractor.layers)
            frame_mask = torch.arange(x.size(1), device=x.device)[None, :] >= frames[:, None]  # [B,T] True=pad
        else:
            frame_mask = frame_padding_mask(padding_mask, x.size(1))
        x = self.dropout(self.post_extract_proj(x))
        if self.training and self.mask_prob > 0:
            x = self._mask_time(x, frame_mask)
        if lengths is not None:  # pos_conv of the utterance alone sees zeros (its conv padding) past the end
            x = x.masked_fill(frame_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        x = x + sinusoidal_positions(~frame_mask, x.size(-1)).to(x.dtype)
        return x, frame_mask

    def _mask_time(self, x, frame_mask):
        from fairseq.data.data_utils import compute_mask_indices

        idx = compute_mask_indices(x.shape[:2], frame_mask, self.mask_prob, self.mask_length, min_masks=2)
        idx = torch.from_numpy(idx).to(x.device)
        return torch.where(idx.unsqueeze(-1), self.mask_emb.to(x.dtype), x)


class ScaledPositionalEncoding(nn.Module):
    """ESPnet: x + alpha * PE[0..T-1], interleaved sin (even dims) / cos (odd dims); alpha is learnt."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.dim = dim
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):  # [B,T,D]
        pos = torch.arange(x.size(1), dtype=torch.float32, device=x.device).unsqueeze(1)
        div = torch.exp(torch.arange(0, self.dim, 2, dtype=torch.float32, device=x.device) * -(math.log(10000.0) / self.dim))
        pe = torch.zeros(x.size(1), self.dim, device=x.device)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        return self.dropout(x + self.alpha * pe.to(x.dtype))


class TextEncoderPrenet(nn.Module):
    def __init__(self, vocab_size: int, dim: int, padding_idx: int, dropout: float):
        super().__init__()
        self.padding_idx = padding_idx
        emb = nn.Embedding(vocab_size, dim, padding_idx=padding_idx)
        self.encoder_prenet = nn.Sequential(emb, ScaledPositionalEncoding(dim, dropout))

    def forward(self, src_tokens: torch.Tensor):
        """src_tokens [B,L] -> (x [B,L,D], padding mask [B,L])."""
        return self.encoder_prenet(src_tokens), src_tokens.eq(self.padding_idx)


class MultiheadAttention(nn.Module):
    """Multi-head attention; q is scaled before anything else, as in the official code (the relative term uses the
    scaled q too). Three execution paths, all exact:

    - no relative positions (decoder self/cross-attention): F.scaled_dot_product_attention with an additive float
      key-padding mask (or none). CPU: the fused flash kernel (dropout 0). CUDA: a float mask rules out flash but keeps
      the memory-efficient kernel; the decoder's single query without mask can use flash.
    - relative positions, no gradient needed (evaluation, frozen encoder): SDPA with the relative bias as additive
      mask (the [B,H,T,T] bias is the only quadratic tensor; pos_k [T,T,hd] is never built).
    - relative positions in training: CUDA keeps SDPA (memory-efficient kernel, which also returns the bias gradient;
      it keeps the bias for backward). Elsewhere SDPA would fall back to its math kernel (a mask that requires grad
      rules out the CPU flash kernel), which keeps the [B,H,T,T] probabilities of every layer for backward;
      `RelativePositionAttention` instead keeps only O(T) tensors per layer and recomputes logits in backward.
      `recompute` (per module, set at construction or on the instance; tests and MoNA's double backward force it)
      picks the path (True/False); None = automatic as described. Not a config field: both paths give the same
      numbers, only memory and speed differ.
    """

    def __init__(self, dim: int, heads: int, dropout: float, recompute: Optional[bool] = None):
        super().__init__()
        self.recompute = recompute
        self.heads, self.head_dim = heads, dim // heads
        self.scaling = self.head_dim ** -0.5
        self.dropout = dropout
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def split(self, x):  # [B,T,D] -> [B,H,T,hd]
        return x.view(x.size(0), x.size(1), self.heads, self.head_dim).transpose(1, 2)

    def forward(self, query, key_value, key_padding_mask=None, pos_k=None, rel_index=None):
        """query [B,Tq,D], key_value [B,Tk,D], key_padding_mask [B,Tk] True=pad, pos_k [K,hd] relative table,
        rel_index [Tq,Tk] (relative_position_index; computed here if not given, the encoder shares one)."""
        q = self.split(self.q_proj(query)) * self.scaling
        k, v = self.split(self.k_proj(key_value)), self.split(self.v_proj(key_value))
        dropout = self.dropout if self.training else 0.0
        if pos_k is not None and rel_index is None:
            rel_index = relative_position_index(q.size(2), k.size(2), pos_k.size(0) // 2, q.device)
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                                  or pos_k is not None and pos_k.requires_grad)
        recompute = self.recompute if self.recompute is not None else q.device.type != "cuda"
        if pos_k is not None and needs_grad and recompute:
            out = RelativePositionAttention.apply(q, k, v, pos_k, rel_index, key_padding_mask, dropout)
        else:
            mask = None
            if pos_k is not None:
                mask = relative_position_bias(q, pos_k, rel_index)  # [B,H,Tq,Tk]
            if key_padding_mask is not None:
                pad = key_padding_mask[:, None, None, :]
                if mask is None:
                    mask = torch.zeros(pad.shape, dtype=q.dtype, device=q.device).masked_fill_(pad, float("-inf"))
                else:  # in place: the gather output is not needed by its backward
                    mask = mask.masked_fill_(pad, float("-inf"))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=1.0)
        out = out.transpose(1, 2).reshape(query.size(0), query.size(1), -1)
        return self.out_proj(out)


def relative_position_index(tq: int, tk: int, max_relative_position: int, device=None) -> torch.Tensor:
    """[Tq,Tk] long: row of pe_k for query i and key j, clamp(i - j, -M, M-1) + M (official clamp, 2M rows)."""
    rel = torch.arange(tq, device=device)[:, None] - torch.arange(tk, device=device)[None, :]
    return rel.clamp_(-max_relative_position, max_relative_position - 1).add_(max_relative_position)


def relative_position_bias(q: torch.Tensor, pos_k: torch.Tensor, rel_index: Optional[torch.Tensor] = None):
    """bias[b,h,i,j] = q[b,h,i] . pe_k[clamp(i-j, -M, M-1) + M] without building the official [T,T,hd] tensor:
    project q on the K table rows once ([B,H,T,K]) and gather. Memory O(T*K) + the [T,T] result.
    (The skewing trick of Transformer-XL gives the same values from a padded [T, 2T+K] buffer and an as_strided
    view; measured slower than the gather on CPU in both directions, so the gather stays.)"""
    B, H, T = q.shape[:3]
    if rel_index is None:
        rel_index = relative_position_index(T, T, pos_k.size(0) // 2, q.device)
    qk = torch.matmul(q, pos_k.t().to(q.dtype))  # [B,H,T,K]
    return torch.gather(qk, 3, rel_index.expand(B, H, *rel_index.shape))


def _rel_logits(q, k, pos_k, rel_index, key_padding_mask):
    """q.k^T + relative bias, padded keys -inf: [B,H,Tq,Tk] in q's dtype, one quadratic buffer (baddbmm in place)."""
    B, H, T, hd = q.shape
    S = k.size(2)
    logits = relative_position_bias(q, pos_k, rel_index)
    logits.view(B * H, T, S).baddbmm_(q.reshape(B * H, T, hd), k.reshape(B * H, S, hd).transpose(1, 2))
    if key_padding_mask is not None:
        logits.masked_fill_(key_padding_mask[:, None, None, :], float("-inf"))
    return logits


def _dropout_keep(shape, p: float, seed: int, device) -> torch.Tensor:
    """Keep-mask scaled by 1/(1-p), regenerated bit for bit from `seed` in backward."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    keep = torch.empty(shape, dtype=torch.float32, device=device).bernoulli_(1.0 - p, generator=gen)
    return keep.mul_(1.0 / (1.0 - p))


class RelativePositionAttention(torch.autograd.Function):
    """softmax(q.k^T + rel_bias(q, pe_k) + pad_mask) . v with attention dropout, saving only q, k, v, pe_k, the
    output and the shared [Tq,Tk] index: logits and probabilities are recomputed in backward (flash-attention style
    recomputation, unblocked). Softmax in fp32 as the official code does; dropout mask regenerated from a seed drawn
    from torch's global RNG (so torch.manual_seed and activation checkpointing reproduce it)."""

    @staticmethod
    def forward(ctx, q, k, v, pos_k, rel_index, key_padding_mask, dropout):
        ctx.dropout = dropout
        ctx.seed = int(torch.randint(2 ** 62, ())) if dropout > 0 else 0
        if dropout > 0:
            acc = torch.promote_types(q.dtype, torch.float32)  # fp32 for fp16/bf16 (official softmax), fp64 stays
            probs = torch.softmax(_rel_logits(q, k, pos_k, rel_index, key_padding_mask), dim=-1, dtype=acc)
            probs.mul_(_dropout_keep(probs.shape, dropout, ctx.seed, probs.device).to(acc))
            out = torch.matmul(probs.to(v.dtype), v)
        else:  # no grad in here, so SDPA can use its fused kernel (CPU flash); the bias is its additive mask
            bias = relative_position_bias(q, pos_k, rel_index)
            if key_padding_mask is not None:
                bias.masked_fill_(key_padding_mask[:, None, None, :], float("-inf"))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
        ctx.save_for_backward(q, k, v, pos_k, rel_index, key_padding_mask, out)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, pos_k, rel_index, key_padding_mask, out = ctx.saved_tensors
        B, H, T, hd = q.shape
        acc = torch.promote_types(q.dtype, torch.float32)
        probs = torch.softmax(_rel_logits(q, k, pos_k, rel_index, key_padding_mask), dim=-1, dtype=acc)
        grad_out = grad_out.to(v.dtype)
        grad_probs = torch.matmul(grad_out, v.transpose(-1, -2)).to(acc)  # dL/d(dropped probs) [B,H,T,S]
        if ctx.dropout > 0:
            keep = _dropout_keep(probs.shape, ctx.dropout, ctx.seed, probs.device).to(acc)
            grad_v = torch.matmul((probs * keep).to(v.dtype).transpose(-1, -2), grad_out)
            grad_probs.mul_(keep)
            del keep
        else:
            grad_v = torch.matmul(probs.to(v.dtype).transpose(-1, -2), grad_out)
        # softmax backward: dS = P * (dP - rowsum(dP * P)); rowsum(dP * P) = rowsum(dO * O) (dropout included)
        delta = (grad_out.to(acc) * out.to(acc)).sum(-1, keepdim=True)
        grad_logits = probs.mul_(grad_probs.sub_(delta))  # in place, accumulation dtype
        del grad_probs
        g = grad_logits.to(q.dtype)
        grad_q = torch.matmul(g, k)
        grad_k = torch.matmul(g.transpose(-1, -2), q)
        del g
        grad_pos = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[3]:
            # relative term: logits[i,j] += qk[i, rel_index[i,j]], qk = q . pe_k^T
            grad_qk = torch.zeros(B, H, T, pos_k.size(0), dtype=acc, device=q.device)
            grad_qk.scatter_add_(3, rel_index.expand(B, H, *rel_index.shape), grad_logits)
            del grad_logits
            grad_qk = grad_qk.to(q.dtype)
            grad_q = grad_q.add_(torch.matmul(grad_qk, pos_k.to(q.dtype)))
            if ctx.needs_input_grad[3]:
                grad_pos = (grad_qk.reshape(-1, pos_k.size(0)).t() @ q.reshape(-1, hd)).to(pos_k.dtype)
        return grad_q, grad_k, grad_v, grad_pos, None, None, None


class EncoderLayer(nn.Module):
    """Post-LN: x = LN(x + drop(attn(x))); x = LN(x + drop(fc2(drop_act(gelu(fc1(x))))))."""

    def __init__(self, dim, ffn_dim, heads, dropout, attention_dropout, activation_dropout):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads, attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.dropout, self.activation_dropout = nn.Dropout(dropout), nn.Dropout(activation_dropout)

    def ffn(self, x):
        return self.dropout(self.fc2(self.activation_dropout(gelu_fp32(self.fc1(x)))))

    def forward(self, x, padding_mask, pos_k, rel_index=None):
        x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x, x, padding_mask, pos_k, rel_index)))
        return self.final_layer_norm(x + self.ffn(x))


class Encoder(nn.Module):
    """Shared speech/text encoder: LN on the INPUT (layer_norm_first=False), post-LN layers, relative positions."""

    def __init__(self, cfg):
        super().__init__()
        dim = cfg.encoder_embed_dim
        self.layer_norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layerdrop = cfg.encoder_layerdrop
        self.checkpoint_activations = cfg.checkpoint_activations
        self.layers = nn.ModuleList(
            EncoderLayer(dim, cfg.encoder_ffn_embed_dim, cfg.encoder_attention_heads, cfg.dropout,
                         cfg.attention_dropout, cfg.activation_dropout)
            for _ in range(cfg.encoder_layers)
        )
        self.pos_emb = RelativePositionTable(2 * cfg.max_relative_position, dim // cfg.encoder_attention_heads)

    def forward(self, x, padding_mask, return_layers: bool = False):
        """[B,T,D], [B,T] -> [B,T,D]; return_layers: also the L+1 states (normed input, each layer's output)."""
        x = self.dropout(self.layer_norm(x))
        states = [x] if return_layers else None
        if padding_mask is not None and not padding_mask.any():
            padding_mask = None  # nothing padded (one utterance, equal lengths): no mask pass per layer
        pos_k = self.pos_emb.pe_k.weight
        rel_index = relative_position_index(x.size(1), x.size(1), pos_k.size(0) // 2, x.device)  # shared by layers
        for layer in self.layers:
            if self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop:
                pass
            elif self.checkpoint_activations and self.training and torch.is_grad_enabled():
                # non-reentrant: works when only parameters require grad; restores the RNG state for dropout
                x = checkpoint(layer, x, padding_mask, pos_k, rel_index, use_reentrant=False)
            else:
                x = layer(x, padding_mask, pos_k, rel_index)
            if return_layers:
                states.append(x)
        return (x, states) if return_layers else x


class RelativePositionTable(nn.Module):
    def __init__(self, rows: int, head_dim: int):
        super().__init__()
        self.pe_k = nn.Embedding(rows, head_dim)


class DecoderLayer(nn.Module):
    """Post-LN: self-attention, cross-attention to the encoder, FFN. No relative bias (the official one is unused)."""

    def __init__(self, dim, ffn_dim, heads, dropout, attention_dropout, activation_dropout):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, heads, attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.encoder_attn = MultiheadAttention(dim, heads, attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, ffn_dim), nn.Linear(ffn_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.dropout, self.activation_dropout = nn.Dropout(dropout), nn.Dropout(activation_dropout)

    def forward(self, x, enc, enc_padding_mask):  # x [B,1,D]: one query, so self-attention needs no causal mask
        x = self.self_attn_layer_norm(x + self.dropout(self.self_attn(x, x)))
        x = self.encoder_attn_layer_norm(x + self.dropout(self.encoder_attn(x, enc, enc_padding_mask)))
        ffn = self.dropout(self.fc2(self.activation_dropout(gelu_fp32(self.fc1(x)))))
        return self.final_layer_norm(x + ffn)


class Decoder(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.layerdrop = cfg.decoder_layerdrop
        self.layers = nn.ModuleList(
            DecoderLayer(cfg.encoder_embed_dim, cfg.decoder_ffn_embed_dim, cfg.decoder_attention_heads, cfg.dropout,
                         cfg.attention_dropout, cfg.activation_dropout)
            for _ in range(cfg.decoder_layers)
        )

    def forward(self, x, enc, enc_padding_mask):
        if enc_padding_mask is not None and not enc_padding_mask.any():
            enc_padding_mask = None  # unpadded batch: mask-free SDPA (CUDA flash eligible)
        for layer in self.layers:
            if self.training and self.layerdrop > 0 and torch.rand(()) < self.layerdrop:
                continue
            x = layer(x, enc, enc_padding_mask)
        return x


class ClassHead(nn.Module):
    """The official SID head with --sid-no-pooling-bn --sid-no-embed-postnet: a bias-free linear layer."""

    def __init__(self, dim: int, num_outputs: int):
        super().__init__()
        self.output_projection = nn.Linear(dim, num_outputs, bias=False)

    def forward(self, x):
        return self.output_projection(x)
