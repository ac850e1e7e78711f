"""The wav2vec2-style convolutional feature extractor of the speech prenet and the two ways of handling a
zero-padded batch (model.feature_padding): the official one, whose statistics and frame mask see the padding, and the
masked one, whose rows equal each utterance alone.

Shapes: B batch, S audio samples, C conv channels, T frames.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def gelu_fp32(x: torch.Tensor) -> torch.Tensor:
    # The official code computes exact (erf) GELU in fp32, also under fp16 training.
    return F.gelu(x.float()).type_as(x)


class Fp32GroupNorm(nn.GroupNorm):
    def forward(self, x):
        out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return out.type_as(x)


class GeluModule(nn.Module):
    def forward(self, x):
        return gelu_fp32(x)


class ConvFeatureExtractor(nn.Module):
    """wav2vec2 "default" extractor: conv (no bias) -> dropout(0) -> [GroupNorm, layer 0 only] -> GELU."""

    def __init__(self, layers: List[Tuple[int, int, int]]):
        super().__init__()
        self.conv_layers = nn.ModuleList()
        in_dim = 1
        for i, (dim, kernel, stride) in enumerate(layers):
            block = [nn.Conv1d(in_dim, dim, kernel, stride=stride, bias=False), nn.Dropout(0.0)]
            if i == 0:
                block.append(Fp32GroupNorm(dim, dim, affine=True))
            block.append(GeluModule())
            self.conv_layers.append(nn.Sequential(*block))
            in_dim = dim
        self.layers = layers
        self.checkpoint_activations = False  # set from the model config by SpeechEncoderPrenet

    def forward(self, source: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        """source [B,S] -> [B,C,T]. lengths [B] (real samples per row): the first GroupNorm takes its statistics over
        each row's real frames only (model.feature_padding=masked); None: over all frames, zero padding included."""
        x = source.unsqueeze(1)
        ckpt = self.checkpoint_activations and self.training and torch.is_grad_enabled()
        for i, conv in enumerate(self.conv_layers):
            block = conv
            if i == 0 and lengths is not None:
                frames = conv_lengths(lengths, self.layers[:1])

                def block(x, conv=conv, frames=frames):  # conv -> dropout -> masked GroupNorm -> GELU
                    return conv[3](masked_group_norm(conv[1](conv[0](x)), frames, conv[2]))
            # checkpointed: each block keeps only its input; conv output and GroupNorm output are recomputed
            x = checkpoint(block, x, use_reentrant=False) if ckpt else block(x)
        return x

    def num_frames(self, num_samples: int) -> int:
        for _, kernel, stride in self.layers:
            num_samples = (num_samples - kernel) // stride + 1
        return num_samples


def conv_lengths(lengths: torch.Tensor, layers: List[Tuple[int, int, int]]) -> torch.Tensor:
    """Real samples [B] -> real output frames [B] of unpadded valid convolutions (the frames whose receptive field
    lies inside the utterance, hence equal to those of the utterance alone)."""
    for _, kernel, stride in layers:
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


def masked_group_norm(x: torch.Tensor, frames: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
    """GroupNorm of x [B,C,T] whose mean/variance are taken over each row's first `frames` [B] frames only (fp32, as
    Fp32GroupNorm); padded frames are normalised with the same statistics (their values are never used)."""
    B, C, T = x.shape
    G = norm.num_groups
    xf = x.float().view(B, G, C // G, T)
    valid = (torch.arange(T, device=x.device)[None, :] < frames[:, None]).to(xf.dtype)[:, None, None, :]  # [B,1,1,T]
    count = (valid.sum(-1, keepdim=True) * (C // G)).clamp(min=1)  # [B,1,1,1]
    mean = (xf * valid).sum((2, 3), keepdim=True) / count
    var = (((xf - mean) * valid) ** 2).sum((2, 3), keepdim=True) / count  # biased, as F.group_norm
    out = ((xf - mean) / torch.sqrt(var + norm.eps)).view(B, C, T)
    if norm.affine:
        out = out * norm.weight.float()[None, :, None] + norm.bias.float()[None, :, None]
    return out.type_as(x)


def frame_padding_mask(sample_mask: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Official rule (not the conv-length formula): drop S % T trailing samples, split the rest into T equal chunks,
    a frame is padding only if all its samples are. [B,S] -> [B,T], True = pad."""
    extra = sample_mask.size(1) % num_frames
    if extra > 0:
        sample_mask = sample_mask[:, :-extra]
    return sample_mask.view(sample_mask.size(0), num_frames, -1).all(-1)
