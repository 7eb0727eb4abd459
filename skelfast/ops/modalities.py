"""skelfast.ops.modalities: all requested skeleton modalities in one fused pass (method.md §3.3)."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .. import reference
from ..modality_spec import DEFAULT_SCALE_BASE, MODALITIES6, check_modalities_args
from ..topology import Topology
from . import _backend

__all__ = ["modalities"]


def modalities(
    x: torch.Tensor,
    frames: Optional[torch.Tensor] = None,
    names: Union[str, Sequence[str]] = MODALITIES6,
    topology: Union[str, Topology] = "ntu25",
    scale_base: float = DEFAULT_SCALE_BASE,
) -> torch.Tensor:
    """(N, 3, T, V, M) joints -> (N, len(names), 3, T, V, M) modalities; see skelfast.reference.modalities."""
    ids, topo, scale = check_modalities_args(x, frames, names, topology, scale_base)
    impl = _backend.resolve(x.device)
    if impl == "torch":
        return reference.modalities(x, frames, names, topo, scale_base)
    raise NotImplementedError(impl)
