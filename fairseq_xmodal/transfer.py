"""Cross-modal checkpoint transfer: an s2c checkpoint -> a t2c checkpoint (or back), with exact accounting.

Both tasks build the same module tree (models/speecht5.py), so transfer is a key-by-key copy; what needs care is
deciding, for every key of the target model, where its tensor comes from, and refusing anything that would silently
change meaning (a permuted class head, a text embedding for another vocabulary, a shape mismatch).

Every target key gets exactly one origin:
  source    the checkpoint being transferred (`TransferPlan.source`)
  modality  a second checkpoint (`modality_from`), e.g. the pretrained init whose target-modality prenet we want
  init      newly initialised by a named, seeded strategy (`INIT_STRATEGIES`: "model" = the model's own init,
            "xavier_uniform" / "xavier_normal" = Glorot init of weight matrices, docs/methods/layerwise_transfer.md)

Selectors name the keys (docs/transfer_and_evaluation.md):
  all | speech_prenet | text_prenet | encoder | decoder | head | pooler
  encoder.layers[=I,J,K-L] | decoder.layers[=...]   those layer indices (all layers without `=`)
  encoder.rest | decoder.rest                         the group's keys outside its layers (final norm, positions)
The most specific selector naming a key wins (layer/rest > group > all); two equally specific selectors that give
one key different origins are an error.

The target's model.classifier is the source's unless `TransferPlan.classifier` changes it; head and pooler keys are
only taken from a checkpoint with the same classifier (its head reads other features otherwise): name their
re-initialisation (--reinit head,pooler) to change it. Decoder keys of a decoder_query source are dropped, with that
reason, when the target classifier builds no decoder (docs/methods/classifier_heads.md).
"""
import copy
import hashlib
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Tuple

import torch
import torch.nn as nn

from .checkpoints import (MODELS, TASKS, atomic_write_json, build_task_and_model, is_official_checkpoint,  # noqa: F401
                          is_xmodal_checkpoint, load_state, make_cfg, save_checkpoint)
from .files import sha256
from .models import heads

logger = logging.getLogger(__name__)

FORMAT = "fairseq_xmodal.transfer/1"
GROUPS: Dict[str, str] = {  # selector name -> state-dict prefix
    "speech_prenet": "speech_encoder_prenet.",
    "text_prenet": "text_encoder_prenet.",
    "encoder": "encoder.",
    "decoder": "decoder.",
    "head": "speaker_decoder_postnet.",
    "pooler": "pooler.",  # parameters of model.classifier=encoder_attentive / layer_weighted (models/heads.py)
}
CLASSIFIER_GROUPS = ("head", "pooler")  # what reads the classifier's features: only moved between equal classifiers
LAYERED = ("encoder", "decoder")
PRENET_OF_TASK = {"s2c": "speech_prenet", "t2c": "text_prenet"}
assert tuple(PRENET_OF_TASK) == TASKS
ORIGINS = ("source", "modality", "init")
# Task fields carried from the source checkpoint: they define the head layout, not the data folder.
CARRIED_TASK_FIELDS = ("labels", "pad_class_dictionary")


class TransferError(ValueError):
    """A transfer that would lose or scramble information; the message names the file to fix."""


# ----------------------------------------------------------------------------------------------------------------
# Selectors


@dataclass(frozen=True)
class Selector:
    group: str  # "all" or a GROUPS name
    layers: Optional[FrozenSet[int]] = None  # None = no layer restriction
    all_layers: bool = False  # `encoder.layers` without indices
    rest: bool = False  # `encoder.rest`: keys of the group outside `.layers.N.`
    text: str = ""

    @property
    def specificity(self) -> int:
        if self.group == "all":
            return 0
        return 2 if (self.layers is not None or self.all_layers or self.rest) else 1

    def matches(self, key: str) -> bool:
        if self.group == "all":
            return True
        prefix = GROUPS[self.group]
        if not key.startswith(prefix):
            return False
        m = re.match(r"layers\.(\d+)\.", key[len(prefix):])
        if self.rest:
            return m is None
        if self.all_layers:
            return m is not None
        if self.layers is not None:
            return m is not None and int(m.group(1)) in self.layers
        return True


def _parse_layers(spec: str, where: str) -> FrozenSet[int]:
    out = set()
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not m:
            raise TransferError(f"selector {where!r}: layer list must look like 0,5 or 0-3,7; got {part!r}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise TransferError(f"selector {where!r}: empty range {part!r}")
        out.update(range(lo, hi + 1))
    return frozenset(out)


def parse_selector(text: str) -> Selector:
    """One selector, e.g. `encoder`, `encoder.layers=0,5`, `decoder.layers=0-2`, `encoder.rest`, `all`."""
    s = text.strip()
    names = ["all"] + list(GROUPS)
    m = re.fullmatch(r"([a-z_]+)(?:\.(layers|rest))?(?:=(.+))?", s)
    if not m or m.group(1) not in names:
        raise TransferError(f"unknown selector {text!r}: use one of {', '.join(names)}, "
                            f"<encoder|decoder>.layers[=I,J,K-L] or <encoder|decoder>.rest")
    group, part, layers = m.groups()
    if part and group not in LAYERED:
        raise TransferError(f"selector {text!r}: only encoder and decoder have layers")
    if layers is not None and part != "layers":
        raise TransferError(f"selector {text!r}: `=` is only allowed after .layers (e.g. encoder.layers=0,5)")
    if part == "rest":
        return Selector(group, rest=True, text=s)
    if part == "layers":
        if layers is None:
            return Selector(group, all_layers=True, text=s)
        return Selector(group, layers=_parse_layers(layers, s), text=s)
    return Selector(group, text=s)


def parse_selectors(text: str) -> List[Selector]:
    """Comma list of selectors; bare numbers continue the previous layer list: `encoder.layers=0,5,decoder,head`."""
    items: List[str] = []
    for tok in (t.strip() for t in text.split(",")):
        if not tok:
            continue
        if re.fullmatch(r"\d+(-\d+)?", tok) and items and ".layers=" in items[-1]:
            items[-1] += "," + tok
        else:
            items.append(tok)
    if not items:
        raise TransferError(f"empty selector list {text!r}")
    return [parse_selector(i) for i in items]


def group_of(key: str) -> str:
    for name, prefix in GROUPS.items():
        if key.startswith(prefix):
            return name
    raise TransferError(f"model key {key!r} belongs to no module group ({', '.join(GROUPS)}); "
                        f"update fairseq_xmodal.transfer.GROUPS for the new module")


def unit_of(key: str) -> str:
    """Readable unit for summaries: `encoder.layers.3`, `encoder.rest`, or the group name."""
    g = group_of(key)
    m = re.match(r"layers\.(\d+)\.", key[len(GROUPS[g]):])
    if g in LAYERED:
        return f"{g}.layers.{m.group(1)}" if m else f"{g}.rest"
    return g


# ----------------------------------------------------------------------------------------------------------------
# Re-initialisation strategies (pluggable)


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


# ----------------------------------------------------------------------------------------------------------------
# Plan


@dataclass
class TransferPlan:
    """What to build and where each part comes from. `take`/`keep`/`reinit` hold selector strings (comma lists ok)."""

    source: str
    task: str  # target task: s2c or t2c
    data: str  # target data folder
    out: str
    modality_from: Optional[str] = None
    take: List[str] = field(default_factory=list)
    keep: List[str] = field(default_factory=list)
    reinit: List[str] = field(default_factory=list)
    rest: Optional[str] = None  # origin of keys no selector names; default "source" unless `take` is given
    init: str = "model"
    seed: int = 1
    task_overrides: Dict[str, Any] = field(default_factory=dict)
    overwrite: bool = False
    classifier: Optional[str] = None  # target model.classifier; None = the source's

    def rules(self) -> Tuple[List[Tuple[Selector, str]], List[str]]:
        """(selector, origin) rules, plus notes on defaults that were applied."""
        notes = []
        keep = list(self.keep)
        prenet = PRENET_OF_TASK[self.task]
        explicit = [sel for t in self.take + self.reinit for sel in parse_selectors(t)]
        if self.modality_from and not keep and self.rest != "modality" and not any(s.group == prenet for s in explicit):
            keep = [prenet]
            notes.append(f"--keep {prenet} (default with --modality-from: the target modality's prenet)")
        rules = [(sel, origin) for origin, texts in (("source", self.take), ("modality", keep), ("init", self.reinit))
                 for t in texts for sel in parse_selectors(t)]
        if self.rest is not None:
            rules.append((Selector("all", text=f"--rest {self.rest}"), self.rest))
        elif not self.take:
            rules.append((Selector("all", text="all (default)"), "source"))
        return rules, notes


@dataclass
class Assignment:
    origin: str
    selector: str


def assign(rules: List[Tuple[Selector, str]], keys: List[str]) -> Dict[str, Assignment]:
    """Every key -> exactly one origin, by the most specific matching selector."""
    for sel, origin in rules:
        if origin not in ORIGINS:
            raise TransferError(f"unknown origin {origin!r} (use {', '.join(ORIGINS)})")
        if not any(sel.matches(k) for k in keys):
            raise TransferError(f"selector {sel.text!r} matches no key of the target model "
                                f"(its layers: {_layer_ranges(keys)})")
    out, uncovered = {}, []
    for key in keys:
        hits = [(sel, origin) for sel, origin in rules if sel.matches(key)]
        if not hits:
            uncovered.append(key)
            continue
        top = max(sel.specificity for sel, _ in hits)
        best = [(sel, origin) for sel, origin in hits if sel.specificity == top]
        if len({origin for _, origin in best}) > 1:
            both = " and ".join(f"{sel.text!r} ({origin})" for sel, origin in best)
            raise TransferError(f"{key}: selected by {both}; make one of them more specific")
        out[key] = Assignment(best[0][1], best[0][0].text)
    if uncovered:
        units = sorted({unit_of(k) for k in uncovered})
        raise TransferError(f"{len(uncovered)} target keys are named by no --take/--keep/--reinit selector "
                            f"({', '.join(units)}); say where they come from with --rest source|modality|init")
    return out


def _layer_ranges(keys: List[str]) -> str:
    parts = []
    for g in LAYERED:
        idx = sorted({int(m.group(1)) for k in keys for m in [re.match(rf"{g}\.layers\.(\d+)\.", k)] if m})
        parts.append(f"{g} 0-{idx[-1]}" if idx else f"{g} none")
    return ", ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints and checks


@dataclass
class LoadedCheckpoint:
    path: str
    state: Dict[str, Any]
    tensors: Dict[str, torch.Tensor]
    task: Optional[str]
    data: Optional[str]
    unavailable: Dict[str, str] = field(default_factory=dict)  # key -> why this checkpoint cannot provide it
    imported: Optional[Dict[str, Any]] = None  # import report, for an official checkpoint

    def describe(self) -> Dict[str, Any]:
        hist = self.state.get("optimizer_history") or [{}]
        return {"path": self.path, "task": self.task, "data": self.data, "sha256": sha256(self.path),
                "num_updates": hist[-1].get("num_updates"),
                **({"official_import": {k: self.imported[k] for k in ("source", "kind")}} if self.imported else {})}


def load_xmodal(path: str, role: str) -> LoadedCheckpoint:
    state = load_state(os.path.abspath(path))
    if not is_xmodal_checkpoint(state):
        hint = ("it is an official SpeechT5 checkpoint: convert it with xmodal-import-official (or pass it as "
                "--modality-from)" if is_official_checkpoint(state) else "it was not written by fairseq_xmodal")
        raise TransferError(f"{role} {path}: {hint}")
    return LoadedCheckpoint(os.path.abspath(path), state, state["model"], state["cfg"]["task"]["_name"],
                            state["cfg"]["task"].get("data"))


def load_modality(path: str, task: str, data: str) -> LoadedCheckpoint:
    """A fairseq_xmodal checkpoint, or an official one imported on the fly for the target task and data."""
    state = load_state(os.path.abspath(path))
    if is_xmodal_checkpoint(state):
        return LoadedCheckpoint(os.path.abspath(path), state, state["model"], state["cfg"]["task"]["_name"],
                                state["cfg"]["task"].get("data"))
    if not is_official_checkpoint(state):
        raise TransferError(f"--modality-from {path}: neither a fairseq_xmodal nor an official SpeechT5 checkpoint")
    from .models.official import import_official

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "imported.pt")
        try:
            report = import_official(path, task, data, out, state=state)  # the file is read once
        except ValueError as e:
            raise TransferError(f"--modality-from {path}: cannot import it on the fly ({e}). Import it with "
                                f"xmodal-import-official (which takes --sid-dict etc.) and pass the result") from None
        imported = load_state(out)
    why = "newly initialised by the official import (the official checkpoint has no such weights)"
    return LoadedCheckpoint(os.path.abspath(path), imported, imported["model"], task, os.path.abspath(data),
                            unavailable={k: why for k in report["newly_initialised"]}, imported=dict(report))


def _labels_path(data: Optional[str], labels_ext: str) -> str:
    return os.path.join(data or "<its data folder>", f"labels.{labels_ext}.txt")


def check_class_dictionary(ck: LoadedCheckpoint, task, role: str):
    """The head rows of `ck` must mean the same labels, in the same order, as the target data's class dictionary."""
    ts = ck.state.get("task_state") or {}
    if "class_labels" not in ts:
        raise TransferError(f"{role} {ck.path} records no class labels (task_state.class_labels), so its head cannot "
                            f"be checked; pass --reinit head, or re-save it with fairseq_xmodal")
    cd, ext = task.class_dictionary, task.cfg.labels
    theirs, ours = (list(ts["class_labels"]), bool(ts.get("class_padded", True))), (list(cd.labels), cd.padded)
    if theirs == ours:
        return
    if theirs[1] != ours[1]:
        what = f"head layout differs (pad_class_dictionary={theirs[1]} vs {ours[1]})"
        fix = f"set task pad_class_dictionary={str(theirs[1]).lower()} (--task-arg)"
    elif sorted(theirs[0]) == sorted(ours[0]):
        what = "same labels in another order: the head rows would be silently permuted"
        fix = f"make {cd.source} list {', '.join(theirs[0])} in this order"
    else:
        what = f"{len(theirs[0])} vs {len(ours[0])} classes"
        fix = f"make {cd.source} list exactly {', '.join(theirs[0])}"
    raise TransferError(
        f"class dictionary mismatch: {role} {ck.path} was trained with classes {theirs[0]} "
        f"({_labels_path(ck.data, ext)}), but {cd.source} gives {ours[0]}: {what}. Fix: {fix}, "
        f"or pass --reinit head to train a new head")


def check_text_dictionary(ck: LoadedCheckpoint, task, role: str):
    """The text prenet of `ck` is an embedding over its text dictionary; the target must use the same symbols."""
    ts = ck.state.get("task_state") or {}
    if "text_symbols" not in ts:
        raise TransferError(f"{role} {ck.path} records no text dictionary (task_state.text_symbols), so its text "
                            f"prenet cannot be checked; pass --reinit text_prenet or --keep text_prenet")
    theirs, ours = list(ts["text_symbols"]), list(task.text_dictionary.symbols)
    if theirs == ours:
        return
    target_dict = task.cfg.text_dictionary or os.path.join(task.cfg.data, "dict.txt")
    first = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
    diff = (f"first difference at index {first}: {theirs[first] if first < len(theirs) else '<end>'!r} vs "
            f"{ours[first] if first < len(ours) else '<end>'!r}")
    their_dict = os.path.join(ck.data or "<its data folder>", "dict.txt")
    raise TransferError(
        f"text dictionary mismatch: {role} {ck.path} was trained with a {len(theirs)}-symbol text dictionary "
        f"({their_dict}), but {target_dict} gives {len(ours)} symbols ({diff}). Fix: copy the SpeechT5 dict.txt the "
        f"checkpoint used to {target_dict}, or pass --reinit text_prenet (or --keep text_prenet with a matching "
        f"--modality-from checkpoint)")


# ----------------------------------------------------------------------------------------------------------------
# Transfer


@dataclass
class TransferReport:
    format: str
    out: str
    source: Dict[str, Any]
    modality: Optional[Dict[str, Any]]
    target: Dict[str, Any]
    plan: Dict[str, Any]
    checks: Dict[str, str]
    transferred: Dict[str, str]  # key -> selector that chose it
    kept: Dict[str, str]
    initialised: Dict[str, str]
    dropped_source_keys: Dict[str, str]  # key -> why it is not in the result
    counts: Dict[str, int]
    dtype_casts: Dict[str, str] = field(default_factory=dict)
    init_notes: Dict[str, str] = field(default_factory=dict)  # initialised key -> what the init strategy did

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def summary_lines(self) -> List[str]:
        lines = [f"transfer {self.source['task']} -> {self.target['task']}: {self.source['path']} -> {self.out}"]
        if self.modality:
            lines.append(f"  modality checkpoint: {self.modality['path']}")
        for note in self.plan.get("notes", []):
            lines.append(f"  default: {note}")
        where = {"transferred": "from source", "kept": "from modality checkpoint",
                 "initialised": f"new (init={self.plan['init']}, seed={self.plan['seed']})"}
        for section in ("transferred", "kept", "initialised"):
            keys = getattr(self, section)
            units = _units_summary(keys)
            lines.append(f"  {section:12s}{len(keys):5d} keys  {where[section]}{': ' + units if units else ''}")
        lines.append(f"  {'dropped':12s}{len(self.dropped_source_keys):5d} source keys"
                     f"{': ' + _units_summary(self.dropped_source_keys) if self.dropped_source_keys else ''}")
        rules: Dict[str, int] = {}
        for note in self.init_notes.values():
            rule = re.sub(r"\(.*$|, padding.*$", "", note).strip()
            rules[rule] = rules.get(rule, 0) + 1
        if rules:
            lines.append("  init rules: " + "; ".join(f"{n} x {rule}" for rule, n in rules.items()))
        for name, result in self.checks.items():
            lines.append(f"  check {name}: {result}")
        return lines


def _units_summary(keys) -> str:
    units: List[str] = []
    for k in keys:
        try:
            u = unit_of(k)
        except TransferError:
            u = k
        if u not in units:
            units.append(u)
    return ", ".join(units)


def transfer(plan: TransferPlan) -> TransferReport:
    """Build the target checkpoint of `plan`, write it and `<out>.transfer.json`, return the accounting."""
    if plan.task not in TASKS:
        raise TransferError(f"target task {plan.task!r}: use one of {', '.join(TASKS)}")
    if plan.init not in INIT_STRATEGIES:
        raise TransferError(f"unknown init strategy {plan.init!r} (known: {', '.join(INIT_STRATEGIES)})")
    if plan.keep and not plan.modality_from:
        raise TransferError("--keep needs --modality-from (the checkpoint the kept modules come from)")
    if plan.rest == "modality" and not plan.modality_from:
        raise TransferError("--rest modality needs --modality-from")
    out = os.path.abspath(plan.out)
    if os.path.exists(out) and not plan.overwrite:
        raise TransferError(f"{out} exists; choose another --out or pass --overwrite")
    if out == os.path.abspath(plan.source) or (plan.modality_from and out == os.path.abspath(plan.modality_from)):
        raise TransferError(f"--out {out} would overwrite an input checkpoint")
    if not os.path.isdir(plan.data):
        raise TransferError(f"target data folder {plan.data} not found")

    source = load_xmodal(plan.source, "source")
    src_cfg = source.state["cfg"]
    task_dict = {"_name": plan.task, "data": os.path.abspath(plan.data),
                 **{f: src_cfg["task"][f] for f in CARRIED_TASK_FIELDS if f in src_cfg["task"]},
                 **plan.task_overrides}
    model_dict = copy.deepcopy(src_cfg["model"])
    if plan.classifier is not None:
        model_dict["classifier"] = heads.classifier_of({"classifier": plan.classifier})  # validated
    cfg = make_cfg(task_dict, model_dict, seed=plan.seed)
    with torch.random.fork_rng(devices=[]):  # seeded construction = the "model" init; the caller's RNG is untouched
        torch.manual_seed(plan.seed)
        task, model = build_task_and_model(cfg)
    target_sd = model.state_dict()
    keys = list(target_sd)

    rules, notes = plan.rules()
    assignment = assign(rules, keys)
    modality = None
    if plan.modality_from:
        modality = load_modality(plan.modality_from, plan.task, plan.data)
    providers = {"source": (source, "source"), "modality": (modality, "--modality-from")}

    checks = _run_checks(assignment, providers, task)
    checks["classifier"] = _check_classifiers(assignment, providers, model.classifier)
    new_sd, casts = {}, {}
    problems = []
    for origin in ("source", "modality"):
        ck, role = providers[origin]
        for key in [k for k, a in assignment.items() if a.origin == origin]:
            problems += _take_tensor(ck, role, key, target_sd[key], new_sd, casts)
    if problems:
        raise TransferError("cannot transfer:\n  " + "\n  ".join(problems))
    init_keys = [k for k, a in assignment.items() if a.origin == "init"]
    init_ctx = InitContext(model, init_keys, plan.seed)
    if init_keys:
        fresh = INIT_STRATEGIES[plan.init](init_ctx)
        missing = set(init_keys) - set(fresh)
        if missing:
            raise TransferError(f"init strategy {plan.init!r} returned no tensor for {sorted(missing)[:5]}")
        new_sd.update({k: fresh[k] for k in init_keys})
    model.load_state_dict(new_sd, strict=True)  # every key exactly once, every shape right

    report = _report(plan, out, source, modality, task, assignment, checks, casts, notes, model.classifier)
    report.init_notes = {k: init_ctx.notes[k] for k in init_keys if k in init_ctx.notes}
    per_key = ("transferred", "kept", "initialised", "dropped_source_keys", "init_notes")  # in the JSON only
    save_checkpoint(out, cfg, model.state_dict(), task.state.state_dict,
                    provenance={"transfer": {k: v for k, v in report.to_dict().items() if k not in per_key}})
    atomic_write_json(report.to_dict(), out + ".transfer.json")
    return report


def transplanted_selectors(path: Optional[str]) -> List[str]:
    """Freeze selectors (models/freezing.py syntax: encoder.layers.3, encoder.rest, a group) for what the transfer that
    wrote `path` took from its source or re-initialised, i.e. everything not kept from --modality-from. Read from
    `<path>.transfer.json`. The Hydra resolver ${xmodal_transplanted:<path>} (config/sweep/transplanted/frozen.yaml)."""
    if not path:
        raise TransferError("${xmodal_transplanted:} needs checkpoint.finetune_from_model: a checkpoint written by "
                            "xmodal-transfer or xmodal-prepare-transplants")
    side = str(path) + ".transfer.json"
    if not os.path.isfile(side):
        raise TransferError(f"{side} not found: freezing the transplanted layers of {path} needs the accounting that "
                            f"xmodal-transfer / xmodal-prepare-transplants write next to the checkpoint")
    import json

    with open(side) as f:
        report = json.load(f)
    units: List[str] = []
    for key in list(report["transferred"]) + list(report["initialised"]):
        unit = unit_of(key)
        if unit not in units:
            units.append(unit)
    if not units:
        raise TransferError(f"{path}: its transfer took nothing from the source and re-initialised nothing")
    return units


def _run_checks(assignment, providers, task) -> Dict[str, str]:
    """Dictionary checks for every checkpoint that provides head or text-prenet keys."""
    checks = {}
    for name, group, fn in (("class_dictionary", "head", check_class_dictionary),
                            ("text_dictionary", "text_prenet", check_text_dictionary)):
        origins = sorted({a.origin for k, a in assignment.items() if group_of(k) == group})
        results = []
        for origin in origins:
            if origin == "init":
                results.append(f"{group} re-initialised: not checked")
                continue
            ck, role = providers[origin]
            fn(ck, task, role)
            results.append(f"{role} matches the target data")
        checks[name] = "; ".join(results)
    return checks


def _check_classifiers(assignment, providers, target: str) -> str:
    """Head/pooler keys come only from a checkpoint whose model.classifier is the target's (or are re-initialised)."""
    results = []
    for origin in ("source", "modality"):
        keys = [k for k, a in assignment.items() if a.origin == origin and group_of(k) in CLASSIFIER_GROUPS]
        ck, role = providers[origin]
        if not keys or ck is None:
            continue
        theirs = heads.classifier_of(ck.state["cfg"]["model"]) if is_xmodal_checkpoint(ck.state) else heads.DECODER_QUERY
        if theirs != target:
            groups = sorted({group_of(k) for k in assignment if group_of(k) in CLASSIFIER_GROUPS})
            raise TransferError(f"classifier mismatch: {role} {ck.path} has model.classifier={theirs}, the target "
                                f"{target}, so its {'/'.join(sorted({group_of(k) for k in keys}))} would read other "
                                f"features. Fix: pass --reinit {','.join(groups)} (a new classifier), or keep the "
                                f"classifier ({theirs})")
        results.append(f"{role} has model.classifier={target}")
    return "; ".join(results) or f"{target}: head re-initialised"


def _take_tensor(ck: LoadedCheckpoint, role: str, key: str, like: torch.Tensor, new_sd, casts) -> List[str]:
    if key in ck.unavailable:
        return [f"{role} {ck.path} cannot provide {key}: {ck.unavailable[key]}"]
    if key not in ck.tensors:
        theirs = heads.classifier_of(ck.state["cfg"]["model"]) if is_xmodal_checkpoint(ck.state) else None
        why = (f"its model.classifier={theirs} builds no decoder" if theirs and not heads.builds_decoder(theirs)
               and key.startswith(heads.DECODER_PREFIX) else "a different model?")
        return [f"{role} {ck.path} has no {key} ({why}); select it from elsewhere (--take/--keep/"
                f"--reinit {unit_of(key)})"]
    t = ck.tensors[key]
    if tuple(t.shape) != tuple(like.shape):
        hint = {"head": "class dictionary size differs; see labels.<labels>.txt or --reinit head",
                "text_prenet": "text dictionary size differs; see dict.txt or --reinit text_prenet"}.get(
                    group_of(key), "the architectures differ; compare cfg.model of both checkpoints")
        return [f"{role} {ck.path}: {key} has shape {tuple(t.shape)}, the target model needs {tuple(like.shape)} "
                f"({hint})"]
    if t.dtype != like.dtype:
        casts[key] = f"{t.dtype} -> {like.dtype}"
        t = t.to(like.dtype)
    new_sd[key] = t
    return []


def _report(plan, out, source, modality, task, assignment, checks, casts, notes,
            target_classifier=heads.DECODER_QUERY) -> TransferReport:
    sections = {o: {k: a.selector for k, a in assignment.items() if a.origin == o} for o in ORIGINS}
    dropped = {}
    for key in source.tensors:
        if key not in assignment:
            dropped[key] = heads.unused_key_reason(key, target_classifier) or "not in the target model"
        elif assignment[key].origin != "source":
            dropped[key] = f"replaced: {assignment[key].origin} by {assignment[key].selector!r}"
    return TransferReport(
        format=FORMAT, out=out, source=source.describe(),
        modality=modality.describe() if modality else None,
        target={"task": plan.task, "data": os.path.abspath(plan.data), "classifier": target_classifier,
                "class_labels": list(task.class_dictionary.labels), "class_padded": task.class_dictionary.padded,
                "text_symbols": len(task.text_dictionary)},
        plan={"take": list(plan.take), "keep": list(plan.keep), "reinit": list(plan.reinit), "rest": plan.rest,
              "init": plan.init, "seed": plan.seed, "task_overrides": dict(plan.task_overrides), "notes": notes},
        checks=checks, transferred=sections["source"], kept=sections["modality"], initialised=sections["init"],
        dropped_source_keys=dropped,
        counts={"target_keys": len(assignment), "transferred": len(sections["source"]),
                "kept": len(sections["modality"]), "initialised": len(sections["init"]),
                "dropped_source_keys": len(dropped)},
        dtype_casts=casts,
    )
