"""Checkpoint loading that cannot run code.

fairseq loads checkpoints with plain `torch.load`. On torch >= 2.6 that means weights_only=True, which rejects the
argparse Namespace in official SpeechT5 checkpoints (and numpy scalars some criteria log); on older torch, or with
TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 in the environment, it means full pickle, which executes whatever a tampered file
asks for. We give fairseq a `torch.load` that always uses the weights-only unpickler, widened by an explicit
allow-list of the plain data types these checkpoints contain, and that then checks the config strings the model
would interpret (conv_feature_layers and the fields fairseq `eval`s), so a payload in a string never runs either.

fairseq's own loads reach safe_torch_load through fairseq_patches.py (why a patch there: its docstring).

Opt-out, for a file you trust and that needs another type: the explicit `--allow-pickle` flag of xmodal-evaluate,
xmodal-probe and xmodal-import-official (`add_allow_pickle_flag`, `allow_full_pickle`; logged on every load). Training
never opts out: convert a trusted file once with `xmodal-import-official --allow-pickle`, which writes a checkpoint
that loads safely. No environment variable can switch this off behind a command's back.
"""
import argparse
import collections
import collections.abc
import logging
import os
import typing

import torch

from .models.conv_spec import FIELD as CONV_FIELD, ConvSpecError, is_plain_spec, parse_conv_layers

logger = logging.getLogger(__name__)

ALLOW_PICKLE_FLAG = "--allow-pickle"
_full_pickle = {"allowed": False}  # set only by allow_full_pickle(), i.e. by a command's --allow-pickle
# Config strings that fairseq code passes to `eval` (optimizers, criteria, conv/fconv models). We never build most of
# them, but load_model_ensemble_and_task builds whatever a checkpoint names: each must be a plain Python literal.
LITERAL_FIELDS = ("adam_betas", "adamax_betas", "lamb_betas", "adafactor_eps", "wer_args", "character_filters",
                  "feature_encoder_spec", "conv_enc_config", "vggblock_enc_config", "transformer_enc_config",
                  "transformer_dec_config", "conv_dec_config", "transformer_context", "transformer_sampling",
                  "decoder_attention", "encoder_layers", "decoder_layers")
NUMPY_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")


class CheckpointError(ValueError):
    """A file refused or unreadable as a checkpoint; the message names it and the fix (console commands: exit 2)."""


class UnsafeCheckpointError(CheckpointError):
    pass


class CorruptCheckpointError(CheckpointError):
    pass


def _numpy_globals() -> list:
    """numpy's scalar/array/dtype reconstruction functions and dtype classes, under the numpy-1 *and* numpy-2 names.

    Files written under numpy 1.x name `numpy.core.multiarray.scalar` / `_reconstruct` (numpy 2: `numpy._core...`);
    the weights-only unpickler looks a GLOBAL up by that name, so each object is listed under both. None of them can
    call arbitrary code: they rebuild a scalar, an array or a dtype from bytes."""
    import numpy as np

    try:
        from numpy._core import multiarray as ma
    except ImportError:  # numpy < 2
        from numpy.core import multiarray as ma
    allowed: list = [np.dtype, np.ndarray]
    for fn in ("scalar", "_reconstruct"):
        obj = getattr(ma, fn)
        allowed += [(obj, f"numpy.core.multiarray.{fn}"), (obj, f"numpy._core.multiarray.{fn}")]
    for name in NUMPY_DTYPES:
        cls = type(np.dtype(name))
        allowed.append(cls)  # its own spelling: numpy.dtypes.Float64DType (numpy 2) or numpy.dtype[float64] (numpy 1)
        allowed.append((cls, f"numpy.dtype[{np.dtype(name).type.__name__}]"))
        allowed.append((cls, f"numpy.dtypes.{cls.__name__}"))
    return allowed


def _allowed_globals() -> list:
    from omegaconf import DictConfig, ListConfig, nodes
    from omegaconf.base import ContainerMetadata, Metadata

    # builtin container/scalar types: omegaconf's metadata names them (object_type=dict, key_type=str, ...) in the
    # DictConfig that rank 0 broadcasts with a checkpoint; calling them on unpickled data cannot run code
    allowed = [dict, list, tuple, set, int, float, str, bool, bytes,
               argparse.Namespace, collections.defaultdict, collections.OrderedDict, typing.Any,
               DictConfig, ListConfig, ContainerMetadata, Metadata,
               nodes.AnyNode, nodes.StringNode, nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode,
               nodes.EnumNode] + _numpy_globals()
    try:  # objects fairseq broadcasts between ranks on multi-GPU resume
        from fairseq.distributed.utils import _TensorPlaceholder

        allowed.append(_TensorPlaceholder)
    except ImportError:
        pass
    return allowed


def file_name(f) -> str:
    """A path, or the name of an open file (fairseq passes one), for messages."""
    if isinstance(f, (str, os.PathLike)):
        return os.fspath(f)
    name = getattr(f, "name", None)
    return name if isinstance(name, str) else "<stream>"


def _sections(state) -> typing.Iterator[typing.Tuple[str, typing.Any]]:
    """(where, holder) for every config section of a checkpoint: args, cfg.model, cfg.task, cfg.optimizer, ..."""
    if not isinstance(state, dict):
        return
    if state.get("args") is not None:
        yield "args", state["args"]
    cfg = state.get("cfg")
    if isinstance(cfg, collections.abc.Mapping):
        for key in list(cfg.keys()):
            yield f"cfg.{key}", cfg[key]


def _get(holder, field):
    if isinstance(holder, collections.abc.Mapping):
        return holder.get(field)
    return getattr(holder, field, None) if isinstance(holder, argparse.Namespace) else None


def check_config_strings(state, name: str) -> None:
    """Refuse a checkpoint whose config holds code where a spec string belongs (nothing is evaluated here)."""
    for where, holder in _sections(state):
        spec = _get(holder, CONV_FIELD)
        if spec is not None:
            try:
                parse_conv_layers(spec, f"{name} ({where})")
            except ConvSpecError as e:
                raise UnsafeCheckpointError(f"refusing to load {name}: {e}") from None
        for field in LITERAL_FIELDS:
            value = _get(holder, field)
            if isinstance(value, str) and not is_plain_spec(value):
                raise UnsafeCheckpointError(
                    f"refusing to load {name}: {where}.{field} = {value[:120]!r} is not a plain Python literal "
                    f"(fairseq would execute it). A genuine checkpoint holds e.g. '(0.9, 0.98)' there")


def allow_full_pickle(allowed: bool = True) -> None:
    """Let every later load of this process use full pickle (which runs whatever code the file holds)."""
    _full_pickle["allowed"] = bool(allowed)


def add_allow_pickle_flag(parser) -> None:
    """The one opt-out flag of the commands that read checkpoints; call allow_full_pickle(args.allow_pickle)."""
    parser.add_argument(ALLOW_PICKLE_FLAG, action="store_true",
                        help="load checkpoints with full pickle instead of the weights-only allow-list: runs any code "
                             "a file contains, so only for files you trust (logged on every load)")


def safe_torch_load(f, map_location=None, **kwargs):
    """torch.load restricted to tensors and the allow-list above, on every torch version we support."""
    kwargs.pop("weights_only", None)
    name = file_name(f)
    if _full_pickle["allowed"]:
        logger.warning(f"{ALLOW_PICKLE_FLAG}: loading {name} with full pickle; only do this for files you trust")
        return torch.load(f, map_location=map_location, weights_only=False, **kwargs)
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5 cannot widen the safe unpickler
        raise UnsafeCheckpointError(
            f"torch {torch.__version__} cannot load {name} safely (needs torch >= 2.5 for an allow-listed weights-only "
            f"load); upgrade torch, or pass {ALLOW_PICKLE_FLAG} if you trust the file"
        )
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            state = torch.load(f, map_location=map_location, weights_only=True, **kwargs)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {name} not found; check the path") from None
    except IsADirectoryError:
        raise CheckpointError(f"{name} is a folder, not a checkpoint file") from None
    except Exception as e:
        text = str(e)
        first = [line for line in text.splitlines() if "Unsupported global" in line or "GLOBAL" in line]
        if first:
            raise UnsafeCheckpointError(
                f"refusing to load {name}: it contains an object outside the checkpoint allow-list "
                f"({first[0].strip()}). A genuine fairseq/SpeechT5 checkpoint never does; if you trust this file, "
                f"pass {ALLOW_PICKLE_FLAG} (xmodal-import-official {ALLOW_PICKLE_FLAG} converts it into a safe one)"
            ) from None
        size = os.path.getsize(name) if os.path.isfile(name) else None
        what = "empty" if size == 0 else f"{type(e).__name__}: {text.splitlines()[0][:120] if text else 'no data'}"
        raise CorruptCheckpointError(
            f"{name} is not a readable PyTorch checkpoint ({what}); it is truncated (a copy or save cut short), "
            f"empty, or another kind of file. Copy it again or point to the right file"
            + (_last_checkpoint_hint(name) if os.path.basename(name) == "checkpoint_last.pt" else "")
        ) from None
    check_config_strings(state, name)
    return state


def _last_checkpoint_hint(name: str) -> str:
    """A half-written checkpoint_last.pt of a plain run: name the newest complete checkpoint to resume from instead."""
    from .sweeps import newest_complete_checkpoint

    newest = newest_complete_checkpoint(os.path.dirname(os.path.abspath(name)))
    if newest is None:
        return f"; no other complete checkpoint is in its folder: remove {name} to start the run over"
    return (f"; the run was probably killed while fairseq copied it. To resume from the newest complete save: "
            f"cp {newest} {name} (sweep jobs do this repair themselves)")
