"""The six modality names and the argument checks shared by the reference and the fused op.

method.md §3: joint, motion, bone, acceleration, rotation axis, angular velocity (omega).
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence, Tuple, Union

import torch

from .topology import Topology, get_topology

__all__ = ["MODALITIES6", "MODALITIES3", "DEFAULT_SCALE_BASE", "modality_ids", "check_modalities_args"]

MODALITIES6: Tuple[str, ...] = ("joint", "motion", "bone", "acceleration", "rotation_axis", "omega")
MODALITIES3: Tuple[str, ...] = ("joint", "motion", "bone")
# method.md §3.1: f[n] = 50 / F[n]; 50 is the resampled sequence length of the official pipeline.
DEFAULT_SCALE_BASE = 50.0

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def modality_ids(names: Union[str, Sequence[str]]) -> Tuple[int, ...]:
    """Map modality names to their index in MODALITIES6; raises ValueError naming the unknown one."""
    if isinstance(names, str):
        names = (names,)
    if not isinstance(names, Iterable):
        raise TypeError(f"names must be a modality name or a sequence of them, got {type(names).__name__} {names!r}")
    names = tuple(names)
    if not names:
        raise ValueError("names must list at least one modality")
    ids = []
    for name in names:
        if name not in MODALITIES6:
            raise ValueError(f"unknown modality name {name!r}; expected one of {MODALITIES6}")
        ids.append(MODALITIES6.index(name))
    return tuple(ids)


def check_modalities_args(
    x: torch.Tensor,
    frames: Optional[torch.Tensor],
    names: Union[str, Sequence[str]],
    topology: Union[str, Topology],
    scale_base: float,
) -> Tuple[Tuple[int, ...], Topology, Optional[torch.Tensor]]:
    """Validate the arguments of `modalities` and compute the per-sample time scale.

    Returns (modality ids, topology, scale) where scale is None (time scale 1) or a tensor (N,)
    on x.device holding scale_base / frames, computed in float (method.md §11 #6), in the kernels'
    accumulation type: float64 for float64 x, float32 otherwise.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be a floating tensor (float16, bfloat16, float32, float64), got {x.dtype}")
    if x.dim() != 5:
        raise ValueError(f"x must have shape (N, 3, T, V, M), got rank {x.dim()} with shape {tuple(x.shape)}")
    N, C, T, V, M = x.shape
    if C != 3:
        raise ValueError(f"x must have C=3 coordinate channels (x, y, z) in dim 1, got C={C}")
    if T < 1:
        raise ValueError(f"x must have at least one frame, got T={T}")
    topo = get_topology(topology)
    if V != topo.num_joints:
        raise ValueError(f"x has V={V} joints but topology {topo.name!r} has {topo.num_joints}")
    ids = modality_ids(names)
    if len(set(ids)) != len(ids):   # the reference refuses it too: one signature, one behaviour
        raise ValueError(f"names lists a modality twice: {tuple(names)}")
    if not 0 < scale_base < float("inf"):
        raise ValueError(f"scale_base must be finite and > 0, got {scale_base}")
    scale = None
    if frames is not None:
        frames = torch.as_tensor(frames)
        if frames.dim() != 1 or frames.shape[0] != N:
            raise ValueError(f"frames must have shape (N,)=({N},), got {tuple(frames.shape)}")
        if frames.dtype == torch.bool or frames.is_complex():
            raise TypeError(f"frames must hold integer or float frame counts, got {frames.dtype}")
        frames_f = frames.to(dtype=torch.float64)     # checked where it lives, then moved
        # A data-dependent check. While tracing (torch.compile, fake tensors) the values are unknown,
        # and on a GPU reading them would synchronise every call (and break CUDA-graph capture): the
        # check is then an assertion that runs with the data (a RuntimeError on CPU, a device-side
        # assert on CUDA). Frames on the CPU (as the data loaders give them) are checked here.
        tracing = isinstance(frames_f, torch._subclasses.FakeTensor) or torch.compiler.is_compiling()
        if N > 0 and (tracing or frames_f.device.type != "cpu"):
            torch._assert_async(torch.all(torch.isfinite(frames_f) & (frames_f > 0)),
                                "frames must be finite and > 0 (true frame counts)")
        elif N > 0 and (not bool(torch.isfinite(frames_f).all()) or bool((frames_f <= 0).any())):
            bad = frames_f[(frames_f <= 0) | ~torch.isfinite(frames_f)][:5].tolist()
            raise ValueError(f"frames must be finite and > 0 (true frame counts), got {bad}")
        frames_f = frames_f.to(x.device, non_blocking=True)
        scale = (scale_base / frames_f).to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    return ids, topo, scale
