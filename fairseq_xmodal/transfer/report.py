"""The accounting of a transfer: every target key with its origin and the selector that chose it, every source key
left out with the reason, the checks that ran, and a readable summary (written to <out>.transfer.json)."""
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from ..models import heads
from ..selectors import describe
from .plan import ORIGINS

FORMAT = "fairseq_xmodal.transfer/1"


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
            units = ", ".join(describe(keys))
            lines.append(f"  {section:12s}{len(keys):5d} keys  {where[section]}{': ' + units if units else ''}")
        lines.append(f"  {'dropped':12s}{len(self.dropped_source_keys):5d} source keys"
                     f"{': ' + ', '.join(describe(self.dropped_source_keys)) if self.dropped_source_keys else ''}")
        rules: Dict[str, int] = {}
        for note in self.init_notes.values():
            rule = re.sub(r"\(.*$|, padding.*$", "", note).strip()
            rules[rule] = rules.get(rule, 0) + 1
        if rules:
            lines.append("  init rules: " + "; ".join(f"{n} x {rule}" for rule, n in rules.items()))
        for name, result in self.checks.items():
            lines.append(f"  check {name}: {result}")
        return lines


def build_report(plan, out, source, modality, task, assignment, checks, casts, notes,
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
