"""The memory-layout rule shared by the ops' C++ kernels: a 4-d tensor is channels-last when it has
channels-last strides and is not also standard-contiguous; everything else is treated as
contiguous. Kernels index memory in that order, so inputs and gradients are brought to it."""
from __future__ import annotations

import torch

__all__ = ["memory_format"]


def memory_format(t: torch.Tensor) -> torch.memory_format:
    """torch.channels_last or torch.contiguous_format, by the rule above."""
    cl = t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl else torch.contiguous_format
