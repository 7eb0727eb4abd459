"""G encoders of one role (query, key, teacher, students) behind the interface the models use.

Layer: reference (plain PyTorch). `EncoderList` runs G reference STGCNs one after another;
`skelfast.nn.StackedEncoders` is the batched drop-in with the same interface and the same
state-dict layout (`'{g}.data_bn.weight'`, ...), so a model holding either loads the other's
checkpoints. The models never index into the encoders; they call:

    encoders(xs (G, N, C, T, V, M)) -> (head outputs (G, N, F), pooled (G, N, H))
    encoders.momentum_update_(source, m, which)   # theta_k <- m theta_k + (1-m) theta_q (§5.1)
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn

from .moco import momentum_update_, parameter_pairs
from .stgcn import STGCN

__all__ = ["EncoderList"]


class EncoderList(nn.ModuleList):
    """G reference STGCNs (method.md §4.2) run in sequence; a ModuleList, so `encoders[g]` works."""

    @classmethod
    def build(cls, num_models: int, **encoder_kwargs) -> "EncoderList":
        """G freshly initialised STGCN(**encoder_kwargs)."""
        return cls(STGCN(**encoder_kwargs) for _ in range(num_models))

    @property
    def num_models(self) -> int:
        return len(self)

    def forward(self, xs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """xs (G, N, C, T, V, M) or G tensors (N, C, T, V, M) -> (head out (G, N, F), pooled (G, N, H))."""
        if len(xs) != len(self):
            raise ValueError(f"expected inputs for {len(self)} encoders, got {len(xs)}")
        outs = [enc(x) for enc, x in zip(self, xs)]
        return torch.stack([z for z, _ in outs]), torch.stack([h for _, h in outs])

    @torch.no_grad()
    def momentum_update_(self, source: "EncoderList", m: float, which: Optional[Sequence[int]] = None) -> None:
        """Momentum-update encoders `which` (default all) towards `source`'s, one multi-tensor update."""
        which = range(len(self)) if which is None else list(which)
        keys, queries = parameter_pairs([self[g] for g in which], [source[g] for g in which])
        momentum_update_(keys, queries, m)
