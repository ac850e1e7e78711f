"""Checkpoint loading that cannot run code.

fairseq loads checkpoints with plain `torch.load`. On torch >= 2.6 that means weights_only=True, which rejects the
argparse Namespace in official SpeechT5 checkpoints (and numpy scalars some criteria log); on older torch it means
full pickle, which executes whatever a tampered file asks for. We give fairseq a `torch.load` that always uses the
weights-only unpickler, widened by an explicit allow-list of the plain data types these checkpoints contain.

Opt-out, for a file you trust and that needs another type: XMODAL_UNSAFE_TORCH_LOAD=1 (logs a warning every time).
"""
import argparse
import collections
import logging
import os
import types
import typing

import torch

logger = logging.getLogger(__name__)

UNSAFE_ENV = "XMODAL_UNSAFE_TORCH_LOAD"


def _allowed_globals() -> list:
    import numpy as np
    from omegaconf import DictConfig, ListConfig, nodes
    from omegaconf.base import ContainerMetadata, Metadata

    # builtin container/scalar types: omegaconf's metadata names them (object_type=dict, key_type=str, ...) in the
    # DictConfig that rank 0 broadcasts with a checkpoint; calling them on unpickled data cannot run code
    allowed = [dict, list, tuple, set, int, float, str, bool, bytes,
               argparse.Namespace, collections.defaultdict, collections.OrderedDict, typing.Any,
               DictConfig, ListConfig, ContainerMetadata, Metadata,
               nodes.AnyNode, nodes.StringNode, nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode,
               nodes.EnumNode, np.dtype, np.ndarray]
    allowed += [type(np.dtype(t)) for t in ("float16", "float32", "float64", "int32", "int64", "bool")]
    try:  # numpy >= 2 pickles name numpy._core.multiarray.*
        from numpy._core import multiarray as ma
    except ImportError:
        from numpy.core import multiarray as ma
    allowed += [ma.scalar, ma._reconstruct]
    try:  # objects fairseq broadcasts between ranks on multi-GPU resume
        from fairseq.distributed.utils import _TensorPlaceholder

        allowed.append(_TensorPlaceholder)
    except ImportError:
        pass
    return allowed


class UnsafeCheckpointError(RuntimeError):
    pass


def safe_torch_load(f, map_location=None, **kwargs):
    """torch.load restricted to tensors and the allow-list above, on every torch version we support."""
    kwargs.pop("weights_only", None)
    if os.environ.get(UNSAFE_ENV) == "1":
        logger.warning(f"{UNSAFE_ENV}=1: loading {f} with full pickle; only do this for files you trust")
        return torch.load(f, map_location=map_location, weights_only=False, **kwargs)
    if not hasattr(torch.serialization, "safe_globals"):  # torch < 2.5 cannot widen the safe unpickler
        raise UnsafeCheckpointError(
            f"torch {torch.__version__} cannot load {f} safely (needs torch >= 2.5 for an allow-listed weights-only "
            f"load); upgrade torch, or set {UNSAFE_ENV}=1 if you trust the file"
        )
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(f, map_location=map_location, weights_only=True, **kwargs)
    except Exception as e:
        if "Weights only load failed" not in str(e) and "Unsupported global" not in str(e):
            raise
        name = f if isinstance(f, (str, os.PathLike)) else "<stream>"
        first = [line for line in str(e).splitlines() if "Unsupported global" in line or "GLOBAL" in line]
        raise UnsafeCheckpointError(
            f"refusing to load {name}: it contains an object outside the checkpoint allow-list "
            f"({first[0].strip() if first else e.__class__.__name__}). A genuine fairseq/SpeechT5 checkpoint never "
            f"does; if you trust this file, set {UNSAFE_ENV}=1"
        ) from None


class TorchWithSafeLoad(types.ModuleType):
    """`torch` as seen by fairseq's checkpoint code: everything forwarded, except `load`."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    load = staticmethod(safe_torch_load)

