"""Features for users: load a checkpoint, embed raw joints, get per-stream and fused embeddings.

Layer: training (public API).

    from skelfast.train.api import Embedder
    emb = Embedder.from_checkpoint("runs/pipeline_.../distill/last.pt")   # or a run folder
    out = emb(x, frames)        # x (N, 3, T, V, M) raw joints (the prepared layout), frames (N,) or None
    out["streams"]["joint"]     # (N, 256) pooled backbone feature of the joint stream
    out["fused"]                # (N, S*256): per-stream unit features concatenated, renormalised

The modalities (motion, bone, ..., method.md §3) are computed inside from the raw joints. The
encoders run in eval mode without gradients, exactly as in linear evaluation (§7), the streams as
one batched network on the skelfast backend. On CPU, `skelfast.cpu_allocator.tune_cpu_allocator()`
(what the training CLI does; the library never changes malloc on its own) made 6-stream features of
a 128-sample batch about 3x faster on the 2-core box (batched 8.5-10 s -> 2.8 s): glibc otherwise
maps and page-faults every large activation afresh.
"""
from __future__ import annotations

import sys
import warnings
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import load_checkpoint
from .features import EVALUABLE_COMMANDS, eval_model_from_checkpoint, stream_features

__all__ = ["Embedder"]


def _user_stacklevel() -> int:
    """warnings.warn's stacklevel of the first caller outside torch and skelfast (the user's line):
    forward runs under Module.__call__ and torch.no_grad's wrapper, whose depth torch may change."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in ("torch", "skelfast"):
        frame, level = frame.f_back, level + 1
    return level


class Embedder(nn.Module):
    """Frozen encoders of a pretraining or distillation checkpoint as a feature extractor."""

    def __init__(self, model: nn.Module, source: str):
        super().__init__()
        self.model = model.eval()
        self.source = source
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.eval()

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "cpu", backend: str = "skelfast") -> "Embedder":
        """A `pretrain`, `distill` or `finetune` checkpoint file (or run folder) -> Embedder on `device`
        (a fine-tuning run's streams are those of its view, with the fine-tuned backbones)."""
        ck = load_checkpoint(path, expect_commands=EVALUABLE_COMMANDS)
        # num_class is irrelevant (the heads are not used); 1 keeps the unused heads tiny
        model, source = eval_model_from_checkpoint(ck, num_class=1, backend=backend)
        return cls(model, source).to(device)

    @property
    def streams(self) -> Sequence[str]:
        """Names of the embedding streams ('fused' for the 3->1 fused student)."""
        return ("fused",) if self.model.fused else tuple(self.model.streams)

    @property
    def dim(self) -> int:
        """Per-stream embedding size (hidden_dim, 256 with the official settings)."""
        return self.model.hidden_dim

    def train(self, mode: bool = True):
        return super().train(False)    # always eval (BN running statistics, no dropout)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, frames: Optional[torch.Tensor] = None) -> Dict[str, object]:
        """x (N, 3, T, V, M) float raw joints, frames (N,) raw frame counts (tensor or sequence; None =
        time scale 1, as the model's own frames=None: x at its true frame rate)
        -> {'streams': {name: (N, H)}, 'fused': (N, S*H) unit rows}."""
        if not isinstance(x, torch.Tensor):     # a NumPy array failed on .dim(), naming nothing
            raise TypeError(f"x must be a torch.Tensor (N, 3, T, V, M); got {type(x).__name__} (use torch.from_numpy)")
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"x must be (N, 3, T, V, M) raw joints, got {tuple(x.shape)}")
        dev = next(self.model.parameters()).device
        x = x.to(dev, torch.float32)
        # None stays None (scale 1): filling in frames = T would scale by 50/T, not 1
        if frames is None and getattr(self.model, "true_timeline", False):
            warnings.warn("Embedder: no frames for a model trained with true_timeline (time scale 50/F): motion, "
                          "acceleration and angular velocity use scale 1, unlike in training and linear "
                          "evaluation; pass the raw frame counts F of resized (50-frame) inputs",
                          stacklevel=_user_stacklevel())
        frames = None if frames is None else torch.as_tensor(frames).to(dev)
        f = stream_features(self.model, x, frames)   # (S, N, H)
        streams = {name: f[i] for i, name in enumerate(self.streams)}
        unit = F.normalize(f, dim=-1)
        fused = F.normalize(unit.transpose(0, 1).reshape(x.shape[0], -1), dim=-1)
        return {"streams": streams, "fused": fused}
