"""The two input modalities, in one place: which task reads each, which model group embeds it, and its net_input keys.

Everything that asks "which prenet belongs to this task" (the tasks, freezing's `prenet` selector, transfer's default
--keep, the probe, MoNA) reads it here. Nothing in this module imports the rest of the package.

  modality  task  prenet (selector group, selectors.GROUPS)  net_input keys
  speech    s2c   speech_prenet                              source [B, samples], padding_mask [B, samples]
  text      t2c   text_prenet                                src_tokens [B, tokens], src_lengths [B]
"""
from dataclasses import dataclass
from typing import Dict, Mapping, Tuple


@dataclass(frozen=True)
class Modality:
    name: str  # speech | text
    task: str  # the task whose input it is
    prenet: str  # the module group that embeds it (a selectors.GROUPS name)
    input_keys: Tuple[str, ...]  # its keys in sample["net_input"]; the first one is always present

    @property
    def other(self) -> "Modality":
        return TEXT if self is SPEECH else SPEECH


SPEECH = Modality("speech", "s2c", "speech_prenet", ("source", "padding_mask"))
TEXT = Modality("text", "t2c", "text_prenet", ("src_tokens", "src_lengths"))
MODALITIES: Dict[str, Modality] = {m.name: m for m in (SPEECH, TEXT)}
BY_TASK: Dict[str, Modality] = {m.task: m for m in (SPEECH, TEXT)}
TASKS: Tuple[str, ...] = tuple(BY_TASK)  # ("s2c", "t2c")


def of_task(task: str) -> Modality:
    if task not in BY_TASK:
        raise ValueError(f"task {task!r}: use one of {', '.join(TASKS)}")
    return BY_TASK[task]


def of_name(name: str) -> Modality:
    if name not in MODALITIES:
        raise ValueError(f"modality {name!r}: use one of {', '.join(MODALITIES)}")
    return MODALITIES[name]


def of_net_input(net_input: Mapping) -> Modality:
    """The modality a batch's net_input carries (speech has `source`, text `src_tokens`)."""
    for m in (SPEECH, TEXT):
        if m.input_keys[0] in net_input:
            return m
    raise ValueError(f"net_input with keys {sorted(net_input)} is neither speech (source, padding_mask) nor text "
                     f"(src_tokens, src_lengths)")
