"""The one-device rule of every skelfast op, checked in the fake (Meta) kernels.

The dispatcher sends a call that mixes a meta tensor with CPU tensors to the Meta kernel, which is
the op's fake implementation: without this check its `new_empty` output came back as the result,
uninitialised memory on the CPU (found by a fuzz of the public API). Under FakeTensorMode
(torch.compile) the same check refuses a traced call that eager would refuse.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["check_one_device"]


def check_one_device(op: str, **tensors: Optional[torch.Tensor]) -> None:
    """Raise RuntimeError naming the arguments when the given tensors (None skipped) are not all on
    one device."""
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise RuntimeError(f"skelfast::{op}: all tensor arguments must be on one device, got "
                           + ", ".join(f"{name} on {dev}" for name, dev in devices.items()))
