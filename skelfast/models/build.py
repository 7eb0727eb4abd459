"""skelfast.models.build: the method's models with skelfast's fused kernels swapped in.

backend='reference' is exactly skelfast.reference.build; backend='skelfast' (default) builds the
same model (same initial weights for the same seed, same state-dict keys, so checkpoints are
interchangeable) whose modalities and losses run through the fused ops of skelfast.ops that exist
in this build and whose G encoders of each role run as one batched network
(skelfast.nn.StackedEncoders). Optimiser states follow the parameter tensors and are not
interchangeable between backends.
"""
from __future__ import annotations

from types import SimpleNamespace

import torch.nn as nn

from .. import ops
from ..nn import StackedEncoders
from ..reference import build as reference_build
from ..reference.models import KERNEL_NAMES, kernel_set

__all__ = ["build", "fused_kernels", "BACKENDS"]

BACKENDS = ("skelfast", "reference")


def fused_kernels() -> SimpleNamespace:
    """The kernel set of skelfast: every fused op a model calls, and the batched encoders."""
    fused = {name: getattr(ops, name) for name in KERNEL_NAMES if hasattr(ops, name)}
    return kernel_set(**fused, encoders=StackedEncoders.build)


def build(name: str, backend: str = "skelfast", **overrides) -> nn.Module:
    """Build model `name` (see skelfast.reference.build) on `backend` ('skelfast' or 'reference')."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "skelfast" and "kernels" not in overrides:
        overrides["kernels"] = fused_kernels()
    return reference_build(name, **overrides)
