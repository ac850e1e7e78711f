"""Classifier heads: how the SpeechT5 classifier turns the encoder output into the one vector its class head reads
(`model.classifier`, docs/methods/classifier_heads.md). The one pooling implementation of the package: the model,
the knowledge-distortion probe (evaluation/probe.py) and the MoNA criterion (criterions/mona.py) all pool here.

  decoder_query      the official SID path: the decoder attends from one all-zero query; its output [B,D]
  encoder_mean       masked mean of the encoder output over the real frames/tokens
  encoder_attentive  one learned attention-pooling query over the encoder output (slue-toolkit SelfAttentionPooling:
                     a = softmax_t(w . h_t + b) over the real frames, pooled = sum_t a_t h_t)
  layer_weighted     a learned softmax-weighted sum of the encoder's L+1 layer outputs (SUPERB-style: the encoder
                     input after its layer norm, then each layer's output; the last one is the encoder output),
                     then the masked mean

The encoder heads never build or run the decoder. Their parameters live in the module group `pooler`
(`pooler.attention.*`, `pooler.layer_weights`); the class projection stays `speaker_decoder_postnet` (group `head`).

Shapes: B batch, T frames/tokens, D model dim, N = L + 1 encoder states.
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

DECODER_QUERY = "decoder_query"
CLASSIFIERS = (DECODER_QUERY, "encoder_mean", "encoder_attentive", "layer_weighted")
ENCODER_HEADS = CLASSIFIERS[1:]
POOLER_PREFIX = "pooler."
DECODER_PREFIX = "decoder."


def classifier_of(model_cfg) -> str:
    """The classifier a (possibly older) model config asks for; checkpoints written before the option existed have
    no field and are decoder_query."""
    get = model_cfg.get if isinstance(model_cfg, dict) else (lambda k, d=None: getattr(model_cfg, k, d))
    kind = str(get("classifier", None) or DECODER_QUERY)
    if kind not in CLASSIFIERS:
        raise ValueError(f"model.classifier={kind!r}: use one of {', '.join(CLASSIFIERS)}")
    return kind


def builds_decoder(classifier: str) -> bool:
    return classifier == DECODER_QUERY


def unused_key_reason(key: str, classifier: str) -> Optional[str]:
    """Why a (decoder) key of another checkpoint has no place in a model with this classifier, or None."""
    if not builds_decoder(classifier) and key.startswith(DECODER_PREFIX):
        return (f"decoder, not built with model.classifier={classifier} (the class head reads the pooled encoder "
                f"output; only decoder_query uses the decoder)")
    return None


def classifier_of_state_dict(state_dict) -> str:
    """The classifier a state dict was saved from, read from its keys (decoder weights = decoder_query)."""
    if any(k.startswith(DECODER_PREFIX) for k in state_dict):
        return DECODER_QUERY
    if POOLER_PREFIX + "attention.weight" in state_dict:
        return "encoder_attentive"
    return "layer_weighted" if POOLER_PREFIX + "layer_weights" in state_dict else "encoder_mean"


def check_loadable(state_dict, classifier: str):
    """A clear error (instead of torch's key lists) for weights of another classifier, e.g. finetune_from_model."""
    theirs = classifier_of_state_dict(state_dict)
    if theirs != classifier:
        raise ValueError(f"these weights are a model.classifier={theirs} model, this one is {classifier}: make an init "
                         f"for it with `xmodal-transfer --classifier {classifier} --reinit head"
                         f"{',pooler' if classifier in ('encoder_attentive', 'layer_weighted') else ''}` or "
                         f"`xmodal-import-official --classifier {classifier}`, or set model.classifier={theirs}")


# ------------------------------------------------------------------------------------------------ pooling functions


def masked_mean(x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """x [B,T,D], padding_mask [B,T] (True = pad) -> (mean over the non-pad positions [B,D], their counts [B]).
    Pad positions are zeroed with where (not multiplied by 0), so whatever they hold (even inf/nan) cannot leak."""
    if padding_mask is None:
        return x.sum(dim=1) / x.size(1), x.new_full((x.size(0),), float(x.size(1)))
    keep = ~padding_mask
    counts = keep.sum(dim=1).to(x.dtype)  # [B]
    total = torch.where(keep.unsqueeze(-1), x, x.new_zeros(())).sum(dim=1)
    return total / counts.clamp(min=1).unsqueeze(-1), counts


def zero_query(decoder: Callable, enc: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The official SID "[CLS]": `decoder(query, enc, pad)` from one all-zero query [B,1,D] -> its output [B,D].
    `decoder` is the Decoder module, or a stand-in with substituted parameters (MoNA's functional_call)."""
    query = enc.new_zeros(enc.size(0), 1, enc.size(2))
    return decoder(query, enc, padding_mask)[:, 0]


def attention_pool(x: torch.Tensor, padding_mask: Optional[torch.Tensor], scores: torch.Tensor) -> torch.Tensor:
    """sum_t softmax_t(scores) x_t over the non-pad positions. x [B,T,D], scores [B,T] -> [B,D]. Pad scores get the
    dtype's minimum (exp underflows to exactly 0; an all-pad row gives a zero vector, not nan), pad rows of x are
    zeroed so nothing from them reaches the sum."""
    if padding_mask is not None:
        scores = scores.masked_fill(padding_mask, torch.finfo(scores.dtype).min)
        x = torch.where(padding_mask.unsqueeze(-1), x.new_zeros(()), x)
    weights = torch.softmax(scores.float(), dim=-1).to(x.dtype)  # [B,T]
    return torch.bmm(weights.unsqueeze(1), x).squeeze(1)


# ------------------------------------------------------------------------------------------------ the module


class Pooler(nn.Module):
    """The pooling of one classifier kind, with its parameters (none for decoder_query and encoder_mean):

      encoder_attentive  attention  nn.Linear(D, 1): one score per frame (D + 1 parameters)
      layer_weighted     layer_weights  [N] logits of the softmax over the encoder states (N = L + 1 parameters,
                         zero-initialised: the plain average of all states at the start)

    forward(enc, pad, layers=None, decoder=None) -> [B,D]; decoder_query needs `decoder`, layer_weighted `layers`."""

    def __init__(self, kind: str, dim: int, num_states: int):
        super().__init__()
        if kind not in CLASSIFIERS:
            raise ValueError(f"model.classifier={kind!r}: use one of {', '.join(CLASSIFIERS)}")
        self.kind = kind
        if kind == "encoder_attentive":
            self.attention = nn.Linear(dim, 1)
        if kind == "layer_weighted":
            self.layer_weights = nn.Parameter(torch.zeros(num_states))

    @property
    def needs_layers(self) -> bool:
        return self.kind == "layer_weighted"

    def layer_probabilities(self) -> Optional[torch.Tensor]:
        """softmax(layer_weights) [N] (sums to one), or None for the other kinds."""
        return torch.softmax(self.layer_weights.float(), dim=0) if self.needs_layers else None

    def mix(self, layers: Sequence[torch.Tensor]) -> torch.Tensor:
        """sum_n p_n layers[n]: N tensors [B,T,D] -> [B,T,D]."""
        if len(layers) != self.layer_weights.numel():
            raise ValueError(f"layer_weighted pooler has {self.layer_weights.numel()} weights but got {len(layers)} "
                             f"encoder states (model.encoder_layers changed?)")
        p = self.layer_probabilities().to(layers[0].dtype)
        out = p[0] * layers[0]
        for weight, state in zip(p[1:], layers[1:]):  # accumulated: no stacked [N,B,T,D] copy of the states
            out = out + weight * state
        return out

    def forward(self, enc: torch.Tensor, padding_mask: Optional[torch.Tensor],
                layers: Optional[List[torch.Tensor]] = None, decoder: Optional[Callable] = None) -> torch.Tensor:
        if self.kind == DECODER_QUERY:
            if decoder is None:
                raise ValueError("decoder_query pooling needs the decoder")
            return zero_query(decoder, enc, padding_mask)
        if self.kind == "encoder_mean":
            return masked_mean(enc, padding_mask)[0]
        if self.kind == "encoder_attentive":
            return attention_pool(enc, padding_mask, self.attention(enc).squeeze(-1))
        if layers is None:
            raise ValueError("layer_weighted pooling needs the encoder's layer outputs (encode(return_layers=True))")
        return masked_mean(self.mix(layers), padding_mask)[0]


# ------------------------------------------------------------------------------------------------ reporting


def layer_state_names(num_states: int) -> List[str]:
    """Names of the N encoder states layer_weighted mixes: the input (after the encoder's layer norm), layers 1..L."""
    return ["input"] + [f"layer{i}" for i in range(1, num_states)]


def unwrap(model) -> Optional[nn.Module]:
    """The model with a `pooler` inside fairseq's distributed wrappers, or None."""
    for _ in range(4):
        if model is None or isinstance(getattr(model, "pooler", None), Pooler):
            return model
        model = getattr(model, "module", None)
    return None


def layer_weight_log(model, sample_size: int) -> Dict[str, float]:
    """Logging-output entries `_lw:<state>` = p_state * sample_size for a layer_weighted model (summed over batches
    and workers, divided by the summed sample_size in reduce_layer_weights: an average that still sums to one)."""
    m = unwrap(model)
    if m is None or not m.pooler.needs_layers:
        return {}
    p = m.pooler.layer_probabilities().detach().cpu().tolist()
    return {f"_lw:{name}": float(v) * sample_size for name, v in zip(layer_state_names(len(p)), p)}


def reduce_layer_weights(logging_outputs, sample_size: float, log_scalar: Callable):
    """fairseq metrics: `layer_w_<state>` = the sample-weighted mean of that state's softmax weight."""
    keys = [k for k in (logging_outputs[0] if logging_outputs else {}) if k.startswith("_lw:")]
    for key in keys:
        total = sum(float(log.get(key, 0)) for log in logging_outputs)
        log_scalar(f"layer_w_{key[4:]}", total / max(sample_size, 1), sample_size, round=4)


def describe(model) -> Dict[str, object]:
    """What the classifier is and, for layer_weighted, its current layer weights (for evaluation outputs)."""
    m = unwrap(model)
    if m is None:
        return {"classifier": DECODER_QUERY}
    out: Dict[str, object] = {"classifier": m.pooler.kind,
                              "pooler_parameters": sum(p.numel() for p in m.pooler.parameters())}
    if m.pooler.needs_layers:
        p = m.pooler.layer_probabilities().detach().cpu().tolist()
        out["layer_weights"] = dict(zip(layer_state_names(len(p)), p))
    return out
