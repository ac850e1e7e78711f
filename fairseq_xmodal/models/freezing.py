"""Which parameters of the SpeechT5 classifier train at which update: permanent freezing, freezing for the first N
updates, and the embedder warm-up (docs/methods/freezing.md, docs/methods/embedder_warmup.md).

`model.freeze` and `model.warmup_trainable` are lists of selectors (fairseq_xmodal/selectors.py, the grammar
xmodal-transfer uses too): module groups (speech_prenet, text_prenet, encoder, decoder, head, pooler), `prenet` (the
task's own prenet: the task tells the model when it builds it), `encoder.layers.3`, `encoder.layers.0-5`,
`encoder.layers.0,5`, `encoder.layers.first|middle|last|all` and `encoder.rest`, the same for the decoder.

Three mechanisms, set in the model config:

  model.freeze=[...], model.freeze_updates=0     permanent: requires_grad=False from construction, so fairseq's
                                                 optimizer never sees these parameters
  model.freeze=[...], model.freeze_updates=N     held for updates 0 .. N-1, trained from update N on
  model.embedder_warmup_updates=N                stage 1 (updates 0 .. N-1) trains only model.warmup_trainable
                                                 (default [prenet, pooler, head]); stage 2 trains every
                                                 parameter that is not permanently frozen

A held parameter stays in the optimizer (fairseq builds the optimizer once, from the parameters that require grad).
During a training step (`ClassificationTask.train_step`, via `training_step` below) it gets requires_grad=False, so
no gradient is computed for it, and frozen groups at the start of the forward path run under torch.no_grad. Any
gradient it still has afterwards, and again right before the optimizer step, is dropped (`p.grad = None`). fairseq's
Adam (and torch's optimizers) skip parameters whose grad is None: no moment update, no weight decay, no step count,
so a held parameter is bit-identical until it is released. The stage follows the update count that fairseq passes
to `model.set_num_updates`, every training step and when a checkpoint is loaded, so a resumed run continues in the
right stage.
"""
import logging
from contextlib import contextmanager, nullcontext
from typing import FrozenSet, Iterable, List, Optional, Sequence

import torch.nn as nn

from .. import selectors

logger = logging.getLogger(__name__)


def select_parameters(model: nn.Module, names: Iterable[str], target_prenet: Optional[str],
                      what: str = "model.freeze") -> List[str]:
    """Names (model.named_parameters order) of the parameters the selectors `names` name (selectors.py)."""
    every = [n for n, _ in model.named_parameters()]
    not_built = (f" (model.classifier={getattr(model, 'classifier', '?')} reads the pooled encoder output, without "
                 f"decoder)")
    built = [g for g, attr in selectors.GROUPS.items() if getattr(model, attr, None) is not None]
    return selectors.select([str(s) for s in names], every, what, target_prenet, not_built, built)


def describe(names: Iterable[str], model: nn.Module) -> str:
    """Readable units for logs: whole groups by name, else encoder.layers.3 / encoder.rest / `<group> (part)`."""
    names = set(names)
    every = [n for n, _ in model.named_parameters()]
    return ", ".join(selectors.describe([n for n in every if n in names], every)) or "nothing"


def whole_groups(names: Iterable[str], model: nn.Module) -> FrozenSet[str]:
    return selectors.whole_groups(names, [n for n, _ in model.named_parameters()])


class StagedFreezing:
    """Mixed into SpeechT5Classifier. Public API:

    set_frozen(selected)         freeze exactly these parameters permanently (requires_grad=False), unfreeze the rest
    set_num_updates(n)           fairseq's hook: the update count; re-computes which parameters are held
    in_embedder_warmup           True while the run is in embedder warm-up stage 1 (updates < embedder_warmup_updates)
    training_stage               1 in warm-up stage 1, else 2 (also when no warm-up is configured)
    held_parameters              names of the parameters held (temporarily frozen) at the current update
    frozen_parameters            names of the permanently frozen parameters
    frozen                       the permanently frozen whole groups
    hold_frozen()                context: held parameters get requires_grad=False inside (forward and backward)
    drop_held_grads()            p.grad = None for every held parameter; returns how many had a gradient
    stage_summary()              one line: what trains now and what is held until when
    """

    AFTER_PRENET: Sequence[str] = ()

    def init_stages(self, cfg, target_prenet: Optional[str]):
        """Called once at the end of the model's __init__."""
        if target_prenet is not None and target_prenet not in selectors.GROUPS:
            raise ValueError(f"target prenet {target_prenet!r} is not a module group ({', '.join(selectors.GROUPS)})")
        self.target_prenet = target_prenet
        self.freeze_updates = int(getattr(cfg, "freeze_updates", 0) or 0)
        self.embedder_warmup_updates = int(getattr(cfg, "embedder_warmup_updates", 0) or 0)
        freeze = list(getattr(cfg, "freeze", None) or [])
        trainable = list(getattr(cfg, "warmup_trainable", None) or [])
        if self.freeze_updates < 0 or self.embedder_warmup_updates < 0:
            raise ValueError("model.freeze_updates and model.embedder_warmup_updates count updates: use 0 or more")
        if self.freeze_updates and not freeze:
            raise ValueError(f"model.freeze_updates={self.freeze_updates} holds the parameters of model.freeze for "
                             f"that many updates, but model.freeze is empty")
        self.num_updates = 0
        self.frozen = frozenset()
        self.frozen_selectors: List[str] = []
        self.frozen_parameters = frozenset()
        self.held_parameters = frozenset()
        self._temporary = self._warmup_held = frozenset()
        self._announced = None
        if self.freeze_updates:
            self._temporary = frozenset(select_parameters(self, freeze, target_prenet))
        else:
            self.set_frozen(freeze)
        if self.embedder_warmup_updates:
            if not trainable:
                raise ValueError("model.embedder_warmup_updates needs model.warmup_trainable (e.g. [prenet, head])")
            keep = set(select_parameters(self, trainable, target_prenet, "model.warmup_trainable"))
            self._warmup_held = frozenset(n for n, _ in self.named_parameters() if n not in keep)
        self._update_held()

    # ------------------------------------------------------------------------------------------ permanent freezing

    def set_frozen(self, selected: Iterable[str]):
        """Freeze exactly the parameters the selectors `selected` name (module groups, `prenet`, encoder.layers.3,
        ...) and unfreeze all others. Frozen parameters get requires_grad=False; the leading frozen groups of a
        forward path (e.g. speech_prenet then encoder) run under torch.no_grad. fairseq's trainer builds its optimizer
        from the parameters that require grad when it is first used, so call this before training starts; to release
        parameters during a run, use model.freeze_updates instead."""
        selected = [str(s) for s in selected]
        names = select_parameters(self, selected, getattr(self, "target_prenet", None))
        every = [n for n, _ in self.named_parameters()]
        if selected and len(names) == len(every):
            raise ValueError(f"model.freeze={selected} names every parameter: nothing would be trained")
        frozen = set(names)
        for n, p in self.named_parameters():
            p.requires_grad_(n not in frozen)
        self.frozen_selectors = selected
        self.frozen_parameters = frozenset(frozen)
        self.frozen = whole_groups(frozen, self)
        if hasattr(self, "_warmup_held"):
            self._update_held()

    # ------------------------------------------------------------------------------------------ stages

    def set_num_updates(self, num_updates):
        super().set_num_updates(num_updates)
        if num_updates != self.num_updates:
            self.num_updates = int(num_updates)
            self._update_held()

    def _update_held(self):
        held = set()
        if self.num_updates < self.freeze_updates:
            held |= self._temporary
        if self.num_updates < self.embedder_warmup_updates:
            held |= self._warmup_held
        self.held_parameters = frozenset(held - self.frozen_parameters)
        self._no_grad = whole_groups(self.held_parameters | self.frozen_parameters, self)

    @property
    def in_embedder_warmup(self) -> bool:
        """True while the run is in embedder warm-up stage 1: model.embedder_warmup_updates > 0 and fewer updates
        than that are done. Follows fairseq's update count (set_num_updates), also after a resume."""
        return self.num_updates < self.embedder_warmup_updates

    @property
    def training_stage(self) -> int:
        """1 during embedder warm-up stage 1, else 2 (the fine-tuning stage; the whole run without a warm-up)."""
        return 1 if self.in_embedder_warmup else 2

    @property
    def no_grad_groups(self) -> FrozenSet[str]:
        """Whole groups that get no parameter gradient now (permanently frozen or held): the model runs the leading
        ones of a forward path under torch.no_grad."""
        return self._no_grad

    def _held(self) -> List[nn.Parameter]:
        return [p for n, p in self.named_parameters() if n in self.held_parameters]

    @contextmanager
    def hold_frozen(self):
        """Inside: held parameters have requires_grad=False, so forward and backward compute no gradient for them.
        Restored on exit, so the optimizer (built from requires_grad) always sees them."""
        params = [p for p in self._held() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            yield params
        finally:
            for p in params:
                p.requires_grad_(True)

    def drop_held_grads(self) -> int:
        """p.grad = None for every held parameter, so the optimizer skips it; returns how many had a gradient."""
        n = 0
        for p in self._held():
            if p.grad is not None:
                p.grad = None
                n += 1
        return n

    def stage_summary(self) -> str:
        n = self.num_updates
        parts = [f"update {n}"]
        if self.embedder_warmup_updates:
            parts.append(f"embedder warm-up stage {self.training_stage}"
                         + (f" (stage 2 from update {self.embedder_warmup_updates})" if self.in_embedder_warmup
                            else f" (stage 1 was updates 0-{self.embedder_warmup_updates - 1})"))
        trainable = [name for name, _ in self.named_parameters()
                     if name not in self.held_parameters and name not in self.frozen_parameters]
        parts.append(f"training {describe(trainable, self)}")
        if n < self.freeze_updates:
            parts.append(f"model.freeze held until update {self.freeze_updates}: "
                         f"{describe(self._temporary - self.frozen_parameters, self)}")
        if self.in_embedder_warmup:
            parts.append(f"warm-up holds until update {self.embedder_warmup_updates}: "
                         f"{describe(self._warmup_held - self.frozen_parameters, self)}")
        if self.frozen_parameters:
            parts.append(f"frozen for the whole run: {describe(self.frozen_parameters, self)}")
        return "; ".join(parts)


# ---------------------------------------------------------------------------------------------- task side


def staged_model(model: nn.Module) -> Optional[StagedFreezing]:
    """The StagedFreezing model inside fairseq's distributed wrappers, or None."""
    seen = 0
    while model is not None and not isinstance(model, StagedFreezing) and seen < 4:
        model, seen = getattr(model, "module", None), seen + 1
    return model if isinstance(model, StagedFreezing) else None


def _zero_fills_missing_grads(optimizer) -> bool:
    """fairseq's FP16Optimizer (fp16/bf16 without memory_efficient_*) copies grads into fp32 master weights and
    turns a missing grad into zeros, so Adam would still apply weight decay to a held parameter."""
    try:
        from fairseq.optim.fp16_optimizer import FP16Optimizer
    except ImportError:  # pragma: no cover
        return False
    return isinstance(optimizer, FP16Optimizer)


def training_step(model: nn.Module, optimizer, update_num: int):
    """Context for one forward/backward of fairseq's train_step: sets the update count (hence the stage), logs stage
    changes, holds the held parameters and drops their gradients afterwards. A no-op for other models."""
    m = staged_model(model)
    if m is None:
        return nullcontext()
    return _training_step(m, optimizer, update_num)


@contextmanager
def _training_step(m: StagedFreezing, optimizer, update_num: int):
    m.set_num_updates(update_num)
    configured = m.frozen_parameters or m.freeze_updates or m.embedder_warmup_updates
    if configured and m._announced != m.held_parameters:  # the first step, every stage change, and after a resume
        logger.info(m.stage_summary())
        m._announced = m.held_parameters
    if m.held_parameters and _zero_fills_missing_grads(optimizer):
        raise ValueError("model.freeze_updates / model.embedder_warmup_updates hold parameters by dropping their "
                         "gradients, but fairseq's FP16Optimizer (common.fp16 or bf16) turns a missing gradient into "
                         "zeros and would still apply weight decay to them. Use common.memory_efficient_fp16=true "
                         "(or memory_efficient_bf16=true), or common.amp=true")
    with m.hold_frozen():
        yield
    m.drop_held_grads()
    if m.embedder_warmup_updates:
        from fairseq import metrics

        metrics.log_scalar("stage", m.training_stage, weight=0, priority=250, round=0)


def drop_held_grads(model: nn.Module) -> int:
    """Right before the optimizer step: drop gradients a held parameter may have got after train_step (e.g. zeros
    from a distributed all-reduce, or a train_step override that did not use training_step)."""
    m = staged_model(model)
    return m.drop_held_grads() if m is not None else 0
