"""Small int32 index tables on the device, built once per (values, device).

Why: `torch.tensor(list, device="cuda")` copies from pageable host memory, a synchronous transfer
on every call; the launchers' tables (topology lists, loss pair lists) repeat from step to step.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch

_CACHE: Dict[Tuple[Tuple[int, ...], torch.device], torch.Tensor] = {}


def device_table(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """int32 tensor of `values` on `device` (shared: callers must not write to it)."""
    key = (tuple(int(v) for v in values), torch.device(device))
    table = _CACHE.get(key)
    if table is None:
        table = torch.tensor(list(key[0]), dtype=torch.int32, device=device)
        _CACHE[key] = table
    return table
