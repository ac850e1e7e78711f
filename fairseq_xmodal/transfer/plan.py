"""What a transfer builds and where each target key comes from: the plan, and the rule that gives every key exactly
one origin (the most specific selector naming it; two equally specific ones that disagree are an error)."""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .. import modalities
from ..selectors import ALL, Selector, SelectorError, parse_selectors, unit_of

ORIGINS = ("source", "modality", "init")


class TransferError(ValueError):
    """A transfer that would lose or scramble information; the message names the file to fix."""


@dataclass
class TransferPlan:
    """What to build and where each part comes from. `take`/`keep`/`reinit` hold selector strings (comma lists ok;
    the grammar of selectors.py)."""

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
        """(selector, origin) rules, plus notes on defaults that were applied. `prenet` is the target task's."""
        prenet = modalities.of_task(self.task).prenet

        def parsed(texts: List[str]) -> List[Selector]:
            try:
                return [s.for_task_prenet(prenet) for s in parse_selectors(texts)] if texts else []
            except SelectorError as e:
                raise TransferError(str(e)) from None

        notes = []
        keep = list(self.keep)
        explicit = parsed(self.take) + parsed(self.reinit)
        if self.modality_from and not keep and self.rest != "modality" and not any(s.group == prenet for s in explicit):
            keep = [prenet]
            notes.append(f"--keep {prenet} (default with --modality-from: the target modality's prenet)")
        rules = [(sel, origin) for origin, texts in (("source", self.take), ("modality", keep), ("init", self.reinit))
                 for sel in parsed(texts)]
        if self.rest is not None:
            rules.append((Selector(ALL, text=f"--rest {self.rest}"), self.rest))
        elif not self.take:
            rules.append((Selector(ALL, text="all (default)"), "source"))
        return rules, notes


@dataclass
class Assignment:
    origin: str
    selector: str


def assign(rules: List[Tuple[Selector, str]], keys: List[str]) -> Dict[str, Assignment]:
    """Every key -> exactly one origin, by the most specific matching selector."""
    named = []
    for sel, origin in rules:
        if origin not in ORIGINS:
            raise TransferError(f"unknown origin {origin!r} (use {', '.join(ORIGINS)})")
        try:
            named.append((sel, origin, set(sel.select(keys, what=""))))
        except SelectorError as e:
            raise TransferError(str(e)) from None
    out, uncovered = {}, []
    for key in keys:
        hits = [(sel, origin) for sel, origin, chosen in named if key in chosen]
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
