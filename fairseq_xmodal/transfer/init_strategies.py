"""Re-initialisation strategies of xmodal-transfer (pluggable): `--init model|xavier_uniform|xavier_normal|<yours>`.

A strategy gets the target model exactly as the task built it under torch.manual_seed(seed) and returns a tensor for
every key it is asked for (docs/methods/layerwise_transfer.md)."""
import hashlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn


@dataclass
class InitContext:
    """What a strategy may use: the target model exactly as the task built it under torch.manual_seed(seed).
    A strategy may describe what it did to a key in `notes` (recorded per key in the transfer JSON)."""

    model: torch.nn.Module
    keys: List[str]
    seed: int
    notes: Dict[str, str] = field(default_factory=dict)


InitStrategy = Callable[[InitContext], Dict[str, torch.Tensor]]
INIT_STRATEGIES: Dict[str, InitStrategy] = {}


def register_init_strategy(name: str):
    """Decorator: `@register_init_strategy("xavier") def f(ctx) -> {key: tensor}` for every key in ctx.keys."""
    def wrap(fn: InitStrategy) -> InitStrategy:
        INIT_STRATEGIES[name] = fn
        return fn
    return wrap


@register_init_strategy("model")
def _init_like_model(ctx: InitContext) -> Dict[str, torch.Tensor]:
    """The model's own initialisation (BERT-style N(0, 0.02) linears/embeddings, conv defaults), seeded."""
    sd = ctx.model.state_dict()
    return {k: sd[k].detach().clone() for k in ctx.keys}


def key_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator of its own for every tensor, seeded by (seed, name): a tensor's values depend only on the seed
    and its key, not on which other keys are re-initialised with it."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2 ** 63 - 1))


def _weight_norm_dim(module: nn.Module) -> Optional[int]:
    """The `dim` of a legacy torch.nn.utils.weight_norm on `module.weight`, or None."""
    for hook in module._forward_pre_hooks.values():
        if type(hook).__name__ == "WeightNorm" and getattr(hook, "name", None) == "weight":
            return hook.dim
    return None


def _xavier(ctx: InitContext, kind: str) -> Dict[str, torch.Tensor]:
    """Glorot/Xavier re-initialisation (gain 1), one rule per key:

    - LayerNorm / GroupNorm: weight 1, bias 0.
    - every other tensor with dim >= 2 (Linear [out, in], Conv1d [out, in/groups, k], Embedding [rows, dim]):
      xavier_uniform: U(-a, a), a = sqrt(6 / (fan_in + fan_out)); xavier_normal: N(0, 2 / (fan_in + fan_out)), with
      torch's fans: fan_in = size(1) * receptive field, fan_out = size(0) * receptive field (for an Embedding the two
      are swapped relative to its one-hot view; the sum, hence the distribution, is the same). An Embedding's padding
      row is set to 0 again (as nn.Embedding does; it never gets a gradient).
    - a weight-normalised convolution (weight_g, weight_v; the speech prenet's positional conv): the effective weight
      g * v / ||v|| is the Xavier sample w: v = w, g = ||w|| over the weight_norm dim.
    - biases (1-D `*bias`): 0.
    - any other 1-D or scalar parameter (the speech prenet's mask_emb, the text prenet's positional alpha) has no
      Xavier definition and keeps the model's own seeded init (noted as such).
    Every tensor is drawn from its own generator, seeded by (seed, key) (`key_generator`)."""
    init_fn = {"uniform": nn.init.xavier_uniform_, "normal": nn.init.xavier_normal_}[kind]
    modules = dict(ctx.model.named_modules())
    sd = ctx.model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    for key in ctx.keys:
        like = sd[key]
        mod_name, _, pname = key.rpartition(".")
        module = modules.get(mod_name)
        if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            out[key] = torch.ones_like(like) if pname == "weight" else torch.zeros_like(like)
            ctx.notes[key] = f"{type(module).__name__} {pname} = {1 if pname == 'weight' else 0}"
            continue
        wn_dim = _weight_norm_dim(module) if module is not None and pname in ("weight_g", "weight_v") else None
        if wn_dim is not None:
            w = torch.empty(module.weight_v.shape, dtype=torch.float32)
            init_fn(w, generator=key_generator(ctx.seed, f"{mod_name}.weight"))
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(w)
            t = w if pname == "weight_v" else torch.norm_except_dim(w, 2, wn_dim)
            out[key] = t.to(like.dtype)
            ctx.notes[key] = (f"weight_norm {pname}: effective weight ~ xavier_{kind}(fan_in={fan_in}, "
                              f"fan_out={fan_out}); v = sample, g = its norm")
            continue
        if like.dim() >= 2:
            w = torch.empty(like.shape, dtype=torch.float32)
            init_fn(w, generator=key_generator(ctx.seed, key))
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(w)
            note = f"xavier_{kind}(fan_in={fan_in}, fan_out={fan_out})"
            if isinstance(module, nn.Embedding) and module.padding_idx is not None and pname == "weight":
                w[module.padding_idx].zero_()
                note += f", padding row {module.padding_idx} = 0"
            out[key] = w.to(like.dtype)
            ctx.notes[key] = note
        elif pname.endswith("bias"):
            out[key] = torch.zeros_like(like)
            ctx.notes[key] = "bias = 0"
        else:
            out[key] = like.detach().clone()
            ctx.notes[key] = "no Xavier definition for a 1-D/scalar parameter: the model's own seeded init"
    return out


@register_init_strategy("xavier_uniform")
def _init_xavier_uniform(ctx: InitContext) -> Dict[str, torch.Tensor]:
    """Weight matrices ~ U(-a, a), a = sqrt(6 / (fan_in + fan_out)); biases 0; LayerNorm 1/0 (see _xavier)."""
    return _xavier(ctx, "uniform")


@register_init_strategy("xavier_normal")
def _init_xavier_normal(ctx: InitContext) -> Dict[str, torch.Tensor]:
    """Weight matrices ~ N(0, std^2), std = sqrt(2 / (fan_in + fan_out)); biases 0; LayerNorm 1/0 (see _xavier)."""
    return _xavier(ctx, "normal")
