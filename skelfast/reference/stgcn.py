"""ST-GCN encoder of IKEM / CrosSCLR (method.md §4.2), plain PyTorch, official module names.

Layer: reference (plain PyTorch). Submodule names follow the official `net/st_gcn.py` so that an
official state dict maps key-for-key (`data_bn`, `st_gcn_networks.i.gcn.conv`, `.tcn.{0,2,3}`,
`.residual.{0,1}`, `edge_importance.i`, buffer `A`, `fc`); see skelfast.models.official.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._scalars import is_int, is_real
from ..topology import Topology
from .graph import spatial_adjacency

__all__ = ["graph_conv_reference", "GraphConv", "STGCNBlock", "STGCN", "block_specs", "weights_init_official",
           "TEMPORAL_KERNEL"]

TEMPORAL_KERNEL = 9  # method.md §4.2


def graph_conv_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], A: torch.Tensor,
                         importance: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The spatial unit of an ST-GCN block (method.md §4.1 aggregation, §4.2 step 1).

    Args:
        x: (B, Cin, T, V).
        weight: (K*Cout, Cin, 1, 1) or (K*Cout, Cin), the 1x1 conv weight; output channel k*Cout + c.
        bias: (K*Cout,) or None.
        A: (K, V, V) adjacency, A[k, v, w] from source v to target w.
        importance: (K, V, V) learnable edge-importance mask E, or None (= ones).
    Returns:
        (B, Cout, T, V): out[b,c,t,w] = sum_k sum_v y[b,k,c,t,v] * A[k,v,w] * E[k,v,w],
        with y = conv1x1(x) reshaped to (B, K, Cout, T, V).
    """
    K = A.shape[0]
    if weight.dim() == 2:
        weight = weight[:, :, None, None]
    y = F.conv2d(x, weight, bias)
    B, KC, T, V = y.shape
    y = y.view(B, K, KC // K, T, V)
    a = A if importance is None else A * importance
    return torch.einsum("bkctv,kvw->bctw", y, a)


class GraphConv(nn.Module):
    """Holds the 1x1 conv `conv` (Cin -> K*Cout) of the spatial unit; official name `gcn.conv`."""

    def __init__(self, in_channels: int, out_channels: int, num_subsets: int):
        super().__init__()
        self.num_subsets = num_subsets
        self.conv = nn.Conv2d(in_channels, out_channels * num_subsets, kernel_size=1)

    def forward(self, x: torch.Tensor, A: torch.Tensor, importance: Optional[torch.Tensor]) -> torch.Tensor:
        """x (B, Cin, T, V) -> (B, Cout, T, V)."""
        return graph_conv_reference(x, self.conv.weight, self.conv.bias, A, importance)


class _Zero(nn.Module):
    """Residual 'none' (block 1): contributes 0 (method.md §4.2)."""

    def forward(self, x: torch.Tensor):
        return 0


class STGCNBlock(nn.Module):
    """One st_gcn block: out = ReLU(tcn(gcn(x, A*E)) + residual(x)) (method.md §4.2).

    residual: 'none' (block 1), 'identity' (Cin == Cout and stride 1) or 'conv' (1x1 conv + BN).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, residual: str = "auto",
                 dropout: float = 0.0, num_subsets: int = 3):
        super().__init__()
        if residual == "auto":
            residual = "identity" if (in_channels == out_channels and stride == 1) else "conv"
        if residual not in ("none", "identity", "conv"):
            raise ValueError(f"residual must be 'none', 'identity', 'conv' or 'auto', got {residual!r}")
        self.residual_kind = residual
        self.gcn = GraphConv(in_channels, out_channels, num_subsets)
        pad = (TEMPORAL_KERNEL - 1) // 2
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, (TEMPORAL_KERNEL, 1), (stride, 1), (pad, 0)),
            nn.BatchNorm2d(out_channels),
            nn.Dropout(dropout),
        )
        if residual == "none":
            self.residual = _Zero()
        elif residual == "identity":
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=(stride, 1)),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor, A: torch.Tensor, importance: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x (B, Cin, T, V) -> (B, Cout, ceil(T/stride), V)."""
        return F.relu(self.tcn(self.gcn(x, A, importance)) + self.residual(x))


def check_encoder_args(in_channels, hidden_channels, hidden_dim, feature_dim, num_class, head_hidden,
                       dropout) -> None:
    """Raise ValueError naming the argument of an encoder constructor: 0 or negative sizes used to
    build and then fail inside a BatchNorm or a reshape at the first forward, or return zero-width
    features; a NaN dropout was skipped by one path and refused by the others."""
    sizes = {"in_channels": in_channels, "hidden_channels": hidden_channels, "hidden_dim": hidden_dim,
             "feature_dim": feature_dim, "num_class": num_class, "head_hidden": head_hidden}
    for name, v in sizes.items():
        if v is None and name in ("num_class", "head_hidden"):     # optional
            continue
        if not is_int(v) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if not is_real(dropout) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a probability in [0, 1), got {dropout!r}")


def block_specs(in_channels: int, hidden_channels: int, hidden_dim: int, dropout: float):
    """(Cin, Cout, stride, residual, dropout) of the 10 blocks (method.md §4.2 table)."""
    h = hidden_channels
    specs = [(in_channels, h, 1, "none", 0.0)]  # block 1: no residual, dropout 0
    chans = [(h, h, 1), (h, h, 1), (h, h, 1), (h, 2 * h, 2), (2 * h, 2 * h, 1), (2 * h, 2 * h, 1),
             (2 * h, 4 * h, 2), (4 * h, 4 * h, 1), (4 * h, hidden_dim, 1)]
    specs += [(ci, co, s, "auto", dropout) for ci, co, s in chans]
    return specs


def weights_init_official(m: nn.Module) -> None:
    """`processor/pretrain.py weights_init` (method.md §4.2), for use with `module.apply`.

    Conv1d/Conv2d/Linear weights ~ N(0, 0.02), biases 0; BatchNorm weights ~ N(1, 0.02), biases 0.
    Edge importance (a bare Parameter) is untouched and stays at 1.
    """
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def make_head(head: Optional[str], hidden_dim: int, feature_dim: int, num_class: Optional[int],
              head_hidden: Optional[int]) -> nn.Module:
    """The `fc` of the encoder (method.md §4.2 'Heads').

    'mlp':    Linear(hidden_dim, head_hidden) -> ReLU -> Linear(head_hidden, feature_dim); head_hidden
              defaults to hidden_dim (pretraining 256->256->128). Students use head_hidden = feature_dim
              (256->768->768, §6.1). Official keys fc.0.*, fc.2.*.
    'linear': Linear(hidden_dim, num_class or feature_dim) (linear evaluation, §7). Key fc.*.
    None:     identity; the head output is the pooled feature.
    """
    if head == "mlp":
        mid = hidden_dim if head_hidden is None else head_hidden
        return nn.Sequential(nn.Linear(hidden_dim, mid), nn.ReLU(), nn.Linear(mid, feature_dim))
    if head == "linear":
        return nn.Linear(hidden_dim, feature_dim if num_class is None else num_class)
    if head is None or head == "none":
        return nn.Identity()
    raise ValueError(f"head must be 'mlp', 'linear' or None, got {head!r}")


class STGCN(nn.Module):
    """ST-GCN encoder (method.md §4.2) with a projection / classification head.

    forward(x (N, C, T, V, M)) -> (head_out, pooled (N, hidden_dim)); persons are merged into the
    batch for the backbone and averaged after global pooling.

    With hidden_channels=16, hidden_dim=256 the backbone has 821,380 parameters, 920,068 with the
    256->256->128 MLP head (method.md §4.3).
    """

    def __init__(self, in_channels: int = 3, hidden_channels: int = 16, hidden_dim: int = 256,
                 head: Optional[str] = "mlp", feature_dim: int = 128, num_class: Optional[int] = None,
                 dropout: float = 0.5, topology: Union[str, Topology] = "ntu25", edge_importance: bool = True,
                 head_hidden: Optional[int] = None, init: Optional[str] = "official"):
        super().__init__()
        check_encoder_args(in_channels, hidden_channels, hidden_dim, feature_dim, num_class, head_hidden, dropout)
        A = spatial_adjacency(topology)
        self.register_buffer("A", A)
        K, V = A.shape[0], A.shape[1]
        self.in_channels, self.hidden_dim = in_channels, hidden_dim
        # data_bn channel index = v*C + c (method.md §4.2 'Input normalisation').
        self.data_bn = nn.BatchNorm1d(in_channels * V)
        self.st_gcn_networks = nn.ModuleList(
            STGCNBlock(ci, co, s, res, p, num_subsets=K)
            for ci, co, s, res, p in block_specs(in_channels, hidden_channels, hidden_dim, dropout))
        self.fc = make_head(head, hidden_dim, feature_dim, num_class, head_hidden)
        if edge_importance:
            self.edge_importance = nn.ParameterList(nn.Parameter(torch.ones_like(A)) for _ in self.st_gcn_networks)
        else:
            self.edge_importance = None
        if init == "official":
            self.apply(weights_init_official)
        elif init is not None:
            raise ValueError(f"init must be 'official' or None, got {init!r}")

    def backbone(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, C, T, V, M) -> pooled feature h (N, hidden_dim)."""
        N, C, T, V, M = x.shape
        x = x.permute(0, 4, 3, 1, 2).reshape(N * M, V * C, T)
        x = self.data_bn(x)
        x = x.view(N, M, V, C, T).permute(0, 1, 3, 4, 2).reshape(N * M, C, T, V)
        for i, block in enumerate(self.st_gcn_networks):
            importance = None if self.edge_importance is None else self.edge_importance[i]
            x = block(x, self.A, importance)
        # Global average over (T', V), then over persons (absent persons included; §4.2 'Pooling').
        return x.mean(dim=(2, 3)).view(N, M, -1).mean(dim=1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        return self.fc(h), h

    def head_parameters(self):
        """Parameters of the head `fc` only."""
        return list(self.fc.parameters())
