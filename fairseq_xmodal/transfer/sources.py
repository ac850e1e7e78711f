"""The checkpoints a transfer reads: the source (a fairseq_xmodal checkpoint) and the optional --modality-from
checkpoint (fairseq_xmodal, or official SpeechT5 imported on the fly for the target task and data)."""
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

from ..checkpoints import is_official_checkpoint, is_xmodal_checkpoint, load_state
from ..files import sha256
from ..models.official import import_official
from .plan import TransferError


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
