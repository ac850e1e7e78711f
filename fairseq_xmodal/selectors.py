"""The one grammar for "which parts of the model": model.freeze, model.warmup_trainable, xmodal-transfer's
--take/--keep/--reinit, xmodal-prepare-transplants, the ${xmodal_transplanted:} resolver and the docs
(docs/methods/freezing.md#selectors).

  all                                           every key
  speech_prenet | text_prenet | encoder | decoder | head | pooler
                                                a module group (GROUPS: group -> module attribute of the model)
  prenet                                        the task's own prenet (modalities.py: speech_prenet for s2c,
                                                text_prenet for t2c)
  encoder.layers                                every encoder layer (= encoder.layers.all)
  encoder.layers.L[,L...]                       those layers; L = I | I-J | first | middle | last | all, where
                                                first = 0, middle = n // 2, last = n - 1 of the model's n layers
  encoder.rest                                  the encoder outside its layers (final norm, relative positions)
  decoder.layers... | decoder.rest              the same for the decoder

A comma list of selectors is one string or several; a bare I or I-J after a layer selector continues its layer list:
`encoder.layers.0,5,decoder,head` = encoder.layers.0,5 + decoder + head. A selector names parameter names or
state-dict keys (the same names); a layer selector resolves first/middle/last and checks I-J against the layers the
names have. Where several selectors name one key, the most specific one decides (layers/rest > group/prenet > all).

xmodal-transfer's former spelling `encoder.layers=0,5` is refused with the new spelling (encoder.layers.0,5).
"""
import re
from dataclasses import dataclass, replace
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple, Union

# selector group -> attribute of the model (SpeechT5Classifier); its keys start with "<attribute>."
GROUPS: Dict[str, str] = {
    "speech_prenet": "speech_encoder_prenet",
    "text_prenet": "text_encoder_prenet",
    "encoder": "encoder",
    "decoder": "decoder",
    "head": "speaker_decoder_postnet",
    "pooler": "pooler",  # parameters of model.classifier=encoder_attentive / layer_weighted (models/heads.py)
}
LAYERED = ("encoder", "decoder")  # the groups with numbered layers (`<attribute>.layers.<i>.`)
LAYER_NAMES = ("first", "middle", "last", "all")
PRENET = "prenet"
ALL = "all"
_LAYER_SPEC = re.compile(r"\d+(?:-\d+)?|" + "|".join(LAYER_NAMES))


class SelectorError(ValueError):
    """A selector that cannot be read or names nothing; the message gives the grammar or what the model has."""


def prefix(group: str) -> str:
    return GROUPS[group] + "."


def _layer_of(key: str, group: str) -> Optional[int]:
    m = re.match(r"layers\.(\d+)\.", key[len(prefix(group)):])
    return int(m.group(1)) if m else None


def named_layers(spec: str, n_layers: int, where: str = "layer selector") -> List[int]:
    """`first` -> [0], `middle` -> [n // 2], `last` -> [n - 1], `all` -> 0..n-1, `I` -> [I], `I-J` -> I..J.
    model.freeze and xmodal-prepare-transplants resolve named layers here, so a named layer set means the same layers
    in a prepared checkpoint and in the freeze list of its sweep job."""
    if n_layers < 1:
        raise SelectorError(f"{where}: the model has no such layers")
    if spec in LAYER_NAMES:
        return {"first": [0], "middle": [n_layers // 2], "last": [n_layers - 1], "all": list(range(n_layers))}[spec]
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", spec)
    if not m:
        raise SelectorError(f"{where}: layer {spec!r} is neither an index, a range I-J nor one of "
                            f"{', '.join(LAYER_NAMES)}")
    lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if hi < lo or hi >= n_layers:
        raise SelectorError(f"{where}: layers {spec!r} are not within 0-{n_layers - 1}")
    return list(range(lo, hi + 1))


@dataclass(frozen=True)
class Selector:
    group: str  # ALL, PRENET or a GROUPS name
    part: Optional[str] = None  # None (the whole group), "layers" or "rest"
    layer_specs: Tuple[str, ...] = ()  # with part="layers": I, I-J or a LAYER_NAMES name each
    text: str = ""

    @property
    def specificity(self) -> int:
        return 0 if self.group == ALL else (2 if self.part else 1)

    @property
    def layers(self) -> Optional[FrozenSet[int]]:
        """The layer indices when they need no layer count (only I and I-J specs), else None."""
        if self.part != "layers" or not all(s[0].isdigit() for s in self.layer_specs):
            return None
        return frozenset(i for s in self.layer_specs for i in range(int(s.split("-")[0]), int(s.split("-")[-1]) + 1))

    def for_task_prenet(self, target_prenet: Optional[str], what: str = "selector") -> "Selector":
        """`prenet` made concrete: the group of the task's own prenet."""
        if self.group != PRENET:
            return self
        if target_prenet is None:
            raise SelectorError(f"{what}: `prenet` means the task's own prenet, but there is no task here (name "
                                f"speech_prenet or text_prenet instead)")
        return replace(self, group=target_prenet)

    def indices(self, n_layers: int, what: str = "selector") -> FrozenSet[int]:
        where = f"{what} {self.text!r}" if what else f"selector {self.text!r}"
        return frozenset(i for s in self.layer_specs for i in named_layers(s, n_layers, where))

    def matches(self, key: str, n_layers: Optional[int] = None) -> bool:
        """Whether `key` is named; `n_layers` (the group's layer count) is needed for middle/last only."""
        if self.group == ALL:
            return True
        if self.group == PRENET:
            raise SelectorError(f"selector {self.text!r}: resolve `prenet` for a task first (for_task_prenet)")
        if not key.startswith(prefix(self.group)):
            return False
        layer = _layer_of(key, self.group)
        if self.part is None:
            return True
        if self.part == "rest" or layer is None:
            return self.part == "rest" and layer is None
        if n_layers is not None:
            return layer in self.indices(n_layers)
        if any(s in ("middle", "last") for s in self.layer_specs):
            raise SelectorError(f"selector {self.text!r}: middle/last need the model's layer count")
        return any(s == "all" or (s == "first" and layer == 0) or (s[0].isdigit() and
                   int(s.split("-")[0]) <= layer <= int(s.split("-")[-1])) for s in self.layer_specs)

    def select(self, names: Sequence[str], what: str = "selector", target_prenet: Optional[str] = None,
               not_built: str = "", built: Iterable[str] = ()) -> List[str]:
        """The names (in order) this selector names; an error if it names none, except for a whole group in `built`
        (a module the model has, without parameters: the pooler of decoder_query). `not_built`: why a group may be
        absent from the model, appended to that error."""
        sel = self.for_task_prenet(target_prenet, what)
        label = f"{what}: selector {self.text!r}" if what else f"selector {self.text!r}"
        if sel.group == ALL:
            return list(names)
        in_group = [n for n in names if n.startswith(prefix(sel.group))]
        if not in_group and sel.part is None and sel.group in built:
            return []
        if not in_group:
            raise SelectorError(f"{label} matches no key of the model: {sel.group!r} is not built in this model"
                                f"{not_built}")
        n_layers = None
        if sel.part == "layers":
            present = sorted({i for i in (_layer_of(n, sel.group) for n in in_group) if i is not None})
            n_layers = present[-1] + 1 if present else 0
            for spec in sel.layer_specs:
                try:
                    named_layers(spec, n_layers, sel.group)
                except SelectorError as e:
                    raise SelectorError(f"{label} matches no key of the model: {e}") from None
        hits = [n for n in in_group if sel.matches(n, n_layers)]
        if not hits:
            raise SelectorError(f"{label} matches no key of the model (it has {layer_ranges(names)})")
        return hits


def _grammar() -> str:
    return (f"{ALL}, {PRENET}, {', '.join(GROUPS)}, <encoder|decoder>.layers[.I|.I-J|.{'|.'.join(LAYER_NAMES)}]"
            f" or <encoder|decoder>.rest")


def parse_selector(text: str) -> Selector:
    """One selector: `encoder`, `prenet`, `encoder.layers.0,5`, `decoder.layers.0-2`, `encoder.layers.last`,
    `encoder.rest`, `all`."""
    s = str(text).strip()
    old = re.fullmatch(r"([a-z_]+)\.layers=(.+)", s)
    if old:
        raise SelectorError(f"cannot read selector {s!r}: write {old.group(1)}.layers.{old.group(2)} (one selector "
                            f"grammar for freezing and transfer, docs/methods/freezing.md#selectors)")
    m = re.fullmatch(r"([a-z_]+)(?:\.(layers|rest)(?:\.(.+))?)?", s)
    names = (ALL, PRENET) + tuple(GROUPS)
    if not m or m.group(1) not in names:
        group = re.split(r"[.=]", s)[0]
        raise SelectorError(f"unknown selector {s!r}" + (f" (unknown group {group!r})" if group not in names else "")
                            + f": use {_grammar()}")
    group, part, specs = m.groups()
    if part and group not in LAYERED:
        raise SelectorError(f"selector {s!r}: only encoder and decoder have layers (and a rest)")
    if part == "rest" and specs:
        raise SelectorError(f"cannot read selector {s!r}: encoder.rest / decoder.rest take no layer list")
    if part != "layers":
        return Selector(group, part, text=s)
    layer_specs = tuple(p.strip() for p in (specs or "all").split(","))
    bad = [p for p in layer_specs if not _LAYER_SPEC.fullmatch(p)]
    if bad:
        raise SelectorError(f"selector {s!r}: the layer list must look like 3, 0-5, 0,5 or one of "
                            f"{', '.join(LAYER_NAMES)}; got {bad[0]!r}")
    for p in layer_specs:
        if "-" in p and int(p.split("-")[1]) < int(p.split("-")[0]):
            raise SelectorError(f"selector {s!r}: empty range {p!r}")
    return Selector(group, "layers", layer_specs, text=s)


def parse_selectors(texts: Union[str, Iterable[str]]) -> List[Selector]:
    """Comma lists of selectors (one string or several); a bare I or I-J continues the previous layer list."""
    items: List[str] = []
    for text in ([texts] if isinstance(texts, str) else list(texts)):
        for tok in (t.strip() for t in str(text).split(",")):
            if not tok:
                continue
            if re.fullmatch(r"\d+(?:-\d+)?", tok) and items and re.search(r"\.layers[.=]", items[-1]):
                items[-1] += "," + tok
            else:
                items.append(tok)
    if not items:
        raise SelectorError(f"empty selector list {texts!r}")
    return [parse_selector(i) for i in items]


def select(selectors: Iterable[str], names: Sequence[str], what: str = "selector",
           target_prenet: Optional[str] = None, not_built: str = "", built: Iterable[str] = ()) -> List[str]:
    """The names (in `names` order) any of `selectors` names; every selector must name something (Selector.select)."""
    chosen = set()
    selectors = list(selectors)
    for sel in parse_selectors(selectors) if selectors else []:
        chosen.update(sel.select(names, what, target_prenet, not_built, frozenset(built)))
    return [n for n in names if n in chosen]


# ---------------------------------------------------------------------------------------------- describing names


def group_of(key: str) -> str:
    for name, attr in GROUPS.items():
        if key.startswith(attr + "."):
            return name
    raise SelectorError(f"model key {key!r} belongs to no module group ({', '.join(GROUPS)}); update "
                        f"fairseq_xmodal.selectors.GROUPS for the new module")


def unit_of(key: str) -> str:
    """The smallest selector naming `key` as a unit: `encoder.layers.3`, `encoder.rest`, or the group."""
    g = group_of(key)
    if g not in LAYERED:
        return g
    layer = _layer_of(key, g)
    return f"{g}.layers.{layer}" if layer is not None else f"{g}.rest"


def whole_groups(names: Iterable[str], every: Sequence[str]) -> FrozenSet[str]:
    """The groups all of whose names in `every` (the model's names) are in `names`."""
    names = set(names)
    return frozenset(g for g, attr in GROUPS.items()
                     if any(n.startswith(attr + ".") for n in every)
                     and all(n in names for n in every if n.startswith(attr + ".")))


def describe(names: Iterable[str], every: Optional[Sequence[str]] = None) -> List[str]:
    """Selectors for `names` as units (unit_of), in GROUPS order, each group's in the order of `names`. With
    `every` (all of the model's names), a group entirely in `names` is its group name and a part of a group without
    layers is `<group> (part)`; names of no group are listed as they are."""
    names = list(names)
    whole = whole_groups(names, every) if every is not None else frozenset()
    units: List[str] = []
    for g, attr in list(GROUPS.items()) + [(None, None)]:
        for n in names:
            if g is None:
                u = n if not any(n.startswith(a + ".") for a in GROUPS.values()) else None
            elif not n.startswith(attr + "."):
                u = None
            elif g in whole:
                u = g
            else:
                u = unit_of(n) if (every is None or g in LAYERED) else f"{g} (part)"
            if u is not None and u not in units:
                units.append(u)
    return units


def layer_ranges(names: Sequence[str]) -> str:
    """`encoder 0-11, decoder 0-5` (or `none`) from the layer keys among `names`."""
    parts = []
    for g in LAYERED:
        idx = sorted({i for n in names if n.startswith(prefix(g)) for i in [_layer_of(n, g)] if i is not None})
        parts.append(f"{g} 0-{idx[-1]}" if idx else f"{g} none")
    return ", ".join(parts)
