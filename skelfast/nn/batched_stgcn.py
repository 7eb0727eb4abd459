"""G ST-GCN encoders (method.md §4.2) run as one network over stacked weights.

Layer: model (PyTorch modules over skelfast ops). The G per-modality encoders of IKEM (6 query, 6
key, the teacher; 3 in the 3-modality model) have identical architectures, so they are stacked
along the channel axis: activations are (N*M, G*C, T, V) with group g owning channels
[g*C, (g+1)*C); every convolution is a `groups=G` convolution, every BatchNorm runs over G*C
channels (per-channel statistics, hence identical to G separate BNs), the spatial unit is the
grouped `skelfast.ops.graph_conv`, and the heads are batched matmuls over stacked Linear weights.
The outputs equal those of G independent `skelfast.reference.STGCN` with the same weights.

Module names mirror the reference (`data_bn`, `st_gcn_networks.i.gcn.conv`, `.tcn.{0,2,3}`,
`.residual.{0,1}`, `edge_importance.i`, `A`, `fc...`), and each stacked tensor holds the G
per-model tensors either concatenated along dim 0 (conv/BN/data_bn: (G*X, ...)) or stacked as a new
dim 0 (edge importance (G, K, V, V), head weights (G, out, in)). `per_model_state_dicts()` /
`load_per_model_state_dicts()` convert to and from G reference state dicts (= official encoder
layout, see skelfast.models.official), so checkpoints stay interchangeable.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.batch_norm_relu import batch_norm_relu
from ..ops.graph_conv import graph_conv, graph_conv_composite
from ..ops._layout import memory_format as layout_of
from ..reference.graph import spatial_adjacency
from .._scalars import is_int
from ..reference.stgcn import STGCN, TEMPORAL_KERNEL, block_specs, check_encoder_args, weights_init_official
from ..topology import Topology

__all__ = ["BatchedLinear", "BatchedSTGCNBlock", "BatchedSTGCN", "GroupedConv2d"]


class BatchedLinear(nn.Module):
    """G independent Linear layers: (G, N, in) -> (G, N, out); weight (G, out, in), bias (G, out)."""

    def __init__(self, num_models: int, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.num_models, self.in_features, self.out_features = num_models, in_features, out_features
        self.weight = nn.Parameter(torch.empty(num_models, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(num_models, out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default, per model
        for g in range(self.num_models):
            nn.init.kaiming_uniform_(self.weight[g], a=math.sqrt(5))
            if self.bias is not None:
                bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
                nn.init.uniform_(self.bias[g], -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


def _init_official(m: nn.Module) -> None:
    """weights_init_official, extended to BatchedLinear (N(0, 0.02) weights, zero biases)."""
    if isinstance(m, BatchedLinear):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    else:
        weights_init_official(m)


class _GroupedConvSplitBackward(torch.autograd.Function):
    """conv2d(groups=G) whose backward runs one convolution_backward per group (CPU only).

    oneDNN's grouped channels-last forward is fast, but its grouped backward is 1.2-1.7x slower
    than G separate backwards on this workload (measured, 1 thread, N*M=64: 1244 vs 875 ms for the
    256-channel 9x1 conv); the per-group slices cost one extra copy of x and grad_out. Narrow
    groups lose to the grouped backward at 2 threads, so this runs only from
    SPLIT_BACKWARD_MIN_MACS on (below). Same maths as the grouped backward (each group's
    gradients only involve its own channels).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, groups):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, groups, bias is not None)
        return F.conv2d(x, weight, bias, stride, padding, 1, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, G, has_bias = ctx.conf
        cin, cout = x.shape[1] // G, weight.shape[0] // G
        channels_last = x.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        # With SWAP_TEMPORAL_TAPS (below), a (k, 1) kernel over channels-last (N, T, V, C) runs as
        # the same conv with a (1, k) kernel over (N, V, T, C). The per-group copies are taken in
        # that order anyway, and dx is written back through a transposed view (same passes as the concat).
        swap = SWAP_TEMPORAL_TAPS and channels_last and weight.shape[2] > 1 and weight.shape[3] == 1

        def oriented(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(2, 3) if swap else t

        stride_o, padding_o = ([*reversed(stride)], [*reversed(padding)]) if swap else ([*stride], [*padding])
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False]
        dx = torch.empty_like(x, memory_format=fmt) if mask[0] else None
        dws = []
        for g in range(G):
            xg = oriented(x[:, g * cin:(g + 1) * cin]).contiguous(memory_format=fmt)
            gg = oriented(grad[:, g * cout:(g + 1) * cout]).contiguous(memory_format=fmt)
            wg = oriented(weight[g * cout:(g + 1) * cout])
            dxg, dwg, _ = torch.ops.aten.convolution_backward(gg, xg, wg, None, stride_o, padding_o, [1, 1],
                                                              False, [0, 0], 1, mask)
            if mask[0]:
                dx[:, g * cin:(g + 1) * cin].copy_(oriented(dxg))
            if mask[1]:
                dws.append(oriented(dwg))
        # The bias gradient of all groups in one reduction: oneDNN's per-group bias reduction cost
        # 11 ms of the last block's 78 ms weight+bias backward (measured, N*M=64), this sum 5 ms for all 6.
        db = grad.sum(dim=(0, 2, 3)) if has_bias and ctx.needs_input_grad[2] else None
        return dx, torch.cat(dws, 0) if mask[1] else None, db, None, None, None


# oneDNN's AVX-512 weight gradient of a (k, 1) kernel over channels-last is 1.6x faster with the taps
# along the innermost spatial dim (2 threads, N*M=128, 256 -> 256 9x1 at T=13: 178 vs 112 ms per
# group, data gradient equal; the last block's fwd+bwd, three process pairs: 2.71 / 2.97 / 2.60 ->
# 2.65 / 2.56 / 2.39 s). Its AVX2 kernels gain nothing from it (2-core Zen 3 host, the 6-group
# backward: 256 -> 256 at T=13 6.86 / 7.07 s unswapped vs 7.13 / 7.00 s swapped, 64 -> 64 at T=50
# 1.95 / 1.98 vs 2.22 / 2.33 s), so the swap follows the ISA ATen dispatches to.
SWAP_TEMPORAL_TAPS = torch.backends.cpu.get_cpu_capability().startswith("AVX512")

# oneDNN's jit 1x1 weight gradient with a stride first copies the strided source rows into a
# workspace ("reduce to unit stride"), and with a channels-last source of fewer input channels than
# one vector block it writes past that workspace (uxlfoundation/oneDNN#6035). Seen here as glibc
# heap corruption in a fine-tuning backward (2-core Zen 3, AVX2, torch 2.13: the 4 -> 8 residual
# conv, stride (2, 1), of a 4-channel test encoder; valgrind: an invalid write inside
# jit_avx2_1x1_convolution_bwd_weights_t). Below this many input channels per group (the widest
# block, AVX-512's 16 floats) a strided 1x1 conv on CPU runs as a subsample plus a stride-1 conv:
# the same maths, since a 1x1 kernel without padding reads only the strided rows. Wider layers (the
# real encoders' strided residuals: 16 -> 32 and 32 -> 64 at hidden_channels=16) keep the strided
# call, which measured 5-15% faster here (fwd+bwd, 6 groups of 64 -> 128 and 128 -> 256).
STRIDED_1X1_MIN_CHANNELS = 16

# The split backward pays from this many multiply-adds per output pixel and group on (Cin * Cout *
# kernel taps). Measured, 2 threads, N*M=256, channels-last, split vs grouped backward (copies and
# concatenation included): 9x1 convs 16 -> 16: 128 vs 94 ms, 32 -> 32: 161 vs 134, 32 -> 32 stride 2:
# 199 vs 140; 64 -> 64: 262 vs 364, 64 -> 64 stride 2: 296 vs 261; 1x1 residuals 16 -> 32 stride 2:
# 75 vs 46, 64 -> 256: 198 vs 141; 256 -> 256: 1522 vs 2552 ms for the weight gradient alone.
SPLIT_BACKWARD_MIN_MACS = 64 * 64 * 9


class GroupedConv2d(nn.Conv2d):
    """nn.Conv2d (groups=G) whose CPU forward picks the measured-fastest safe path: with autograd
    and wide groups, the split backward above; narrow strided 1x1 convs as subsample + stride-1
    conv (STRIDED_1X1_MIN_CHANNELS). Same parameters, state-dict keys and maths as nn.Conv2d; the
    policy sits in `_conv_forward` so module hooks (forward, pre-forward, weight reparametrisations)
    still run around it."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if x.device.type != "cpu" or self.padding_mode != "zeros":
            return super()._conv_forward(x, weight, bias)
        stride = self.stride
        if (self.kernel_size == (1, 1) and stride != (1, 1) and self.padding == (0, 0)
                and self.in_channels // self.groups < STRIDED_1X1_MIN_CHANNELS):
            x, stride = x[:, :, ::stride[0], ::stride[1]].contiguous(memory_format=layout_of(x)), (1, 1)
        if (torch.is_grad_enabled() and self.groups > 1 and self.dilation == (1, 1)
                and not torch.is_autocast_enabled("cpu") and weight.numel() // self.groups >= SPLIT_BACKWARD_MIN_MACS):
            return _GroupedConvSplitBackward.apply(x, weight, bias, stride, self.padding, self.groups)
        return F.conv2d(x, weight, bias, stride, self.padding, self.dilation, self.groups)


class _Zero(nn.Module):
    def forward(self, x: torch.Tensor):
        return 0


class _GroupedGraphConv(nn.Module):
    """Holds the grouped 1x1 conv `conv` (G*Cin -> G*K*Cout, groups=G) of the spatial unit."""

    def __init__(self, num_models: int, in_channels: int, out_channels: int, num_subsets: int):
        super().__init__()
        self.num_models, self.num_subsets = num_models, num_subsets
        self.conv = nn.Conv2d(num_models * in_channels, num_models * out_channels * num_subsets, kernel_size=1,
                              groups=num_models)

    def forward(self, x: torch.Tensor, A: torch.Tensor, importance: Optional[torch.Tensor],
                fused: bool = True) -> torch.Tensor:
        fn = graph_conv if fused else graph_conv_composite
        return fn(x, self.conv.weight, self.conv.bias, A, importance, self.num_models)


class BatchedSTGCNBlock(nn.Module):
    """G st_gcn blocks at once: (B, G*Cin, T, V) -> (B, G*Cout, ceil(T/stride), V)."""

    def __init__(self, num_models: int, in_channels: int, out_channels: int, stride: int = 1,
                 residual: str = "auto", dropout: float = 0.0, num_subsets: int = 3):
        super().__init__()
        G = num_models
        if residual == "auto":
            residual = "identity" if (in_channels == out_channels and stride == 1) else "conv"
        if residual not in ("none", "identity", "conv"):
            raise ValueError(f"residual must be 'none', 'identity', 'conv' or 'auto', got {residual!r}")
        self.residual_kind = residual
        self.gcn = _GroupedGraphConv(G, in_channels, out_channels, num_subsets)
        pad = (TEMPORAL_KERNEL - 1) // 2
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(G * out_channels),
            nn.ReLU(),
            GroupedConv2d(G * out_channels, G * out_channels, (TEMPORAL_KERNEL, 1), (stride, 1), (pad, 0), groups=G),
            nn.BatchNorm2d(G * out_channels),
            nn.Dropout(dropout),
        )
        if residual == "none":
            self.residual = _Zero()
        elif residual == "identity":
            self.residual = nn.Identity()
        else:
            self.residual = nn.Sequential(
                GroupedConv2d(G * in_channels, G * out_channels, kernel_size=1, stride=(stride, 1), groups=G),
                nn.BatchNorm2d(G * out_channels))

    def forward(self, x: torch.Tensor, A: torch.Tensor, importance: Optional[torch.Tensor] = None,
                fused: bool = True) -> torch.Tensor:
        # = relu(tcn(gcn(x)) + residual(x)), with fewer full passes over the activations. Fused:
        # BN1 + ReLU and BN2 + dropout + residual add + ReLU are each one op
        # (skelfast.ops.batch_norm_relu), so those modules are not called (their hooks do not run).
        # Unfused: the first ReLU runs in place on a fresh tensor (BatchNorm's backward does not use
        # its output), dropout is skipped when it is the identity and the add and ReLU run in place.
        bn1, _, conv, bn2, drop = self.tcn
        h = self.gcn(x, A, importance, fused)
        h = _batch_norm_relu(bn1, h) if fused else F.relu(bn1(h), inplace=True)
        y = conv(h)
        residual = None
        if self.residual_kind == "identity":
            residual = x
        elif self.residual_kind == "conv":
            residual = self.residual[1](self.residual[0](x))
        # Dropout follows its own module's mode (e.g. model.train() then the Dropouts' .eval()).
        # The op drops only where BN uses batch statistics, so a dropout that is on while bn2
        # normalises with running statistics takes the unfused path.
        p = drop.p if drop.training else 0.0
        if fused and (p == 0.0 or _uses_batch_stats(bn2)):
            return _batch_norm_relu(bn2, y, residual, p)
        y = bn2(y)
        if p > 0:
            y = drop(y)
        if residual is not None:
            y = y.add_(residual)
        return F.relu(y, inplace=True)


def _uses_batch_stats(bn: nn.BatchNorm2d) -> bool:
    """Whether bn normalises with the batch's statistics (as nn.BatchNorm2d.forward decides)."""
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def _batch_norm_relu(bn: nn.BatchNorm2d, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
                     p: float = 0.0) -> torch.Tensor:
    """relu(dropout(bn(x), p) + residual) through skelfast.ops.batch_norm_relu, with the
    bookkeeping of nn.BatchNorm2d.forward (num_batches_tracked; momentum None = cumulative
    average; batch statistics in eval mode when the module tracks none)."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:
            factor = 1.0 / float(bn.num_batches_tracked)
    batch_stats = _uses_batch_stats(bn)
    tracked = not bn.training or bn.track_running_stats
    return batch_norm_relu(x, bn.running_mean if tracked else None, bn.running_var if tracked else None, bn.weight,
                           bn.bias, batch_stats, factor, bn.eps, residual, p)


def _make_head(G: int, head: Optional[str], hidden_dim: int, feature_dim: int, num_class: Optional[int],
               head_hidden: Optional[int]) -> nn.Module:
    """Batched counterpart of skelfast.reference.stgcn.make_head (same key names fc.0 / fc.2 / fc)."""
    if head == "mlp":
        mid = hidden_dim if head_hidden is None else head_hidden
        return nn.Sequential(BatchedLinear(G, hidden_dim, mid), nn.ReLU(), BatchedLinear(G, mid, feature_dim))
    if head == "linear":
        return BatchedLinear(G, hidden_dim, feature_dim if num_class is None else num_class)
    if head is None or head == "none":
        return nn.Identity()
    raise ValueError(f"head must be 'mlp', 'linear' or None, got {head!r}")


class BatchedSTGCN(nn.Module):
    """G ST-GCN encoders with heads, as one network (see the module docstring).

    forward(x) with x (G, N, C, T, V, M) or a sequence of G tensors (N, C, T, V, M) returns
    (head_out (G, N, F), pooled (G, N, hidden_dim)); slice g equals reference encoder g's
    `(fc(h), h)`.

    Args mirror skelfast.reference.STGCN, plus num_models = G. `topology` may also be a (K, V, V)
    adjacency tensor. `fused=False` runs the spatial unit as grouped conv + einsum and the
    temporal unit's BatchNorms, ReLUs, dropout and residual add as plain PyTorch modules instead of
    the skelfast.ops graph_conv and batch_norm_relu ops; in training mode with dropout > 0 the two
    draw different (equally distributed) dropout masks. `memory_format`: 'auto' runs the blocks channels-last
    on CPU (oneDNN's grouped convolutions are 2-4x faster there than NCHW, and graph_conv has a
    channels-last kernel) and contiguous NCHW elsewhere; 'channels_last' / 'contiguous' force one.

    Module hooks: the temporal and residual convs (GroupedConv2d) and the residual BNs are always
    module calls. The fused ops replace module calls where they fuse: each block's `gcn.conv`
    (its output never exists) and, with fused=True, `tcn.0`, `tcn.3` and `tcn.4` (BN, BN, Dropout);
    hooks on those run only with fused=False (then `gcn.conv` still is not called).
    """

    def __init__(self, num_models: int = 6, in_channels: int = 3, hidden_channels: int = 16, hidden_dim: int = 256,
                 head: Optional[str] = "mlp", feature_dim: int = 128, num_class: Optional[int] = None,
                 dropout: float = 0.5, topology: Union[str, Topology, torch.Tensor] = "ntu25",
                 edge_importance: bool = True, head_hidden: Optional[int] = None, init: Optional[str] = "official",
                 fused: bool = True, memory_format: str = "auto"):
        super().__init__()
        if memory_format not in ("auto", "channels_last", "contiguous"):
            raise ValueError(f"memory_format must be 'auto', 'channels_last' or 'contiguous', got {memory_format!r}")
        self.memory_format = memory_format
        if not is_int(num_models) or num_models < 1:
            raise ValueError(f"num_models must be an integer >= 1, got {num_models!r}")
        check_encoder_args(in_channels, hidden_channels, hidden_dim, feature_dim, num_class, head_hidden, dropout)
        if isinstance(topology, torch.Tensor) and (topology.dim() != 3 or topology.shape[1] != topology.shape[2]
                                                   or topology.shape[0] < 1):
            raise ValueError(f"an adjacency tensor as topology must be (K, V, V), got shape {tuple(topology.shape)}")
        G = self.num_models = num_models
        self.config = dict(in_channels=in_channels, hidden_channels=hidden_channels, hidden_dim=hidden_dim, head=head,
                           feature_dim=feature_dim, num_class=num_class, dropout=dropout, topology=topology,
                           edge_importance=edge_importance, head_hidden=head_hidden)
        A = topology.detach().clone().float() if isinstance(topology, torch.Tensor) else spatial_adjacency(topology)
        self.register_buffer("A", A)
        K, V = A.shape[0], A.shape[1]
        self.in_channels, self.hidden_dim, self.fused = in_channels, hidden_dim, fused
        # data_bn channel index = g*V*C + v*C + c (the reference's v*C + c per model)
        self.data_bn = nn.BatchNorm1d(G * in_channels * V)
        self.st_gcn_networks = nn.ModuleList(
            BatchedSTGCNBlock(G, ci, co, s, res, p, num_subsets=K)
            for ci, co, s, res, p in block_specs(in_channels, hidden_channels, hidden_dim, dropout))
        self.fc = _make_head(G, head, hidden_dim, feature_dim, num_class, head_hidden)
        if edge_importance:
            self.edge_importance = nn.ParameterList(
                nn.Parameter(torch.ones(G, K, V, V)) for _ in self.st_gcn_networks)
        else:
            self.edge_importance = None
        if init == "official":
            self.apply(_init_official)
        elif init is not None:
            raise ValueError(f"init must be 'official' or None, got {init!r}")

    # ------------------------------------------------------------------ forward
    def _stack_input(self, x: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.stack(list(x), 0)
        want = f"(G={self.num_models}, N, C={self.in_channels}, T, V={self.A.shape[-1]}, M)"
        if (x.dim() != 6 or x.shape[0] != self.num_models or x.shape[2] != self.in_channels
                or x.shape[4] != self.A.shape[-1]):
            raise ValueError(f"x must be {want}, got {tuple(x.shape)}")
        if x.shape[1] == 0 or x.shape[3] == 0 or x.shape[5] == 0:
            raise ValueError(f"x must be {want} with N, T, M >= 1, got {tuple(x.shape)}")
        if (x.dtype != self.A.dtype and x.device.type in ("cpu", "cuda")
                and not torch.is_autocast_enabled(x.device.type)):
            raise TypeError(f"x is {x.dtype} but the encoders are {self.A.dtype}; convert one of them "
                            f"(e.g. model.to(x.dtype) or x.to({self.A.dtype}))")
        return x

    def backbone(self, x: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        """x (G, N, C, T, V, M) -> pooled features (G, N, hidden_dim)."""
        x = self._stack_input(x)
        G, N, C, T, V, M = x.shape
        # (G, N, C, T, V, M) -> (N*M, G*V*C, T): one BatchNorm1d over all G data_bn's channels
        x = x.permute(1, 5, 0, 4, 2, 3).reshape(N * M, G * V * C, T)
        x = self.data_bn(x)
        x = x.view(N * M, G, V, C, T).permute(0, 1, 3, 4, 2).reshape(N * M, G * C, T, V)
        if self.memory_format == "channels_last" or (self.memory_format == "auto" and x.device.type == "cpu"):
            x = x.contiguous(memory_format=torch.channels_last)
        for i, block in enumerate(self.st_gcn_networks):
            importance = None if self.edge_importance is None else self.edge_importance[i]
            x = block(x, self.A, importance, self.fused)
        # global average over (T', V), then over persons (method.md §4.2 'Pooling'). As a sum
        # scaled afterwards: mean's backward materialises grad / (T'V) over the whole last-block
        # activation (and then a channels-last copy of it), sum's is a broadcast view that the
        # epilogue's backward reads in place.
        h = (x.sum(dim=(2, 3)) * (1.0 / (x.shape[2] * x.shape[3]))).view(N, M, G, -1).mean(dim=1)
        return h.transpose(0, 1)

    def forward(self, x: Union[torch.Tensor, Sequence[torch.Tensor]]) -> Tuple[torch.Tensor, torch.Tensor]:
        h = self.backbone(x)
        if isinstance(self.fc, nn.Identity):
            return h, h
        return self.fc(h), h

    # ------------------------------------------------------------------ per-model state
    @staticmethod
    def _is_stacked(key: str) -> bool:
        """Stacked as a new dim 0 (G, ...) rather than concatenated (G*X, ...)."""
        return key.startswith("edge_importance.") or key.startswith("fc.")

    @staticmethod
    def _is_shared(key: str, t: torch.Tensor) -> bool:
        return key == "A" or key.endswith("num_batches_tracked")

    def stacked_state(self) -> Dict[str, torch.Tensor]:
        """Parameters and buffers in this module's own (stacked) layout, detached, no copies."""
        out = {k: p.detach() for k, p in self.named_parameters()}
        out.update((k, b.detach()) for k, b in self.named_buffers())
        return out

    def split_state(self, stacked: Mapping[str, torch.Tensor], copy: bool = True) -> List[Dict[str, torch.Tensor]]:
        """A dict in the stacked layout (state, gradients, ...) -> G dicts in the reference STGCN layout.

        copy=True: every part is a fresh tensor (a dict saved on its own then holds only its model;
        a view would make torch.save write the whole stacked storage). copy=False: the parts are
        views of the stacked tensors (shared keys: the tensor itself), as nn.Module.state_dict
        returns references, so in-place writes through them (an EMA copy_) reach the module.
        """
        out: List[Dict[str, torch.Tensor]] = [dict() for _ in range(self.num_models)]
        take = (lambda p: p.clone()) if copy else (lambda p: p)
        for key, t in stacked.items():
            t = t.detach()
            if self._is_shared(key, t):
                parts = [take(t) for _ in range(self.num_models)]
            elif self._is_stacked(key):
                parts = [take(p) for p in t.unbind(0)]
            else:
                parts = [take(p) for p in t.chunk(self.num_models, 0)]
            for g, p in enumerate(parts):
                out[g][key] = p
        return out

    def merge_states(self, state_dicts: Sequence[Mapping[str, torch.Tensor]],
                     strict: bool = True) -> Dict[str, torch.Tensor]:
        """G reference-layout dicts -> one dict in the stacked layout (inverse of split_state).

        strict: every key of this module must be in every dict and no dict may hold other keys;
        otherwise keys absent from all dicts are skipped (a key in some dicts only always raises).
        """
        if len(state_dicts) != self.num_models:
            raise ValueError(f"expected {self.num_models} state dicts, got {len(state_dicts)}")
        merged = {}
        for key, t in self.stacked_state().items():
            present = [key in sd for sd in state_dicts]
            if not all(present):
                if strict or any(present):
                    raise KeyError(f"per-model state dicts {[g for g, p in enumerate(present) if not p]} lack {key!r}")
                continue
            parts = [sd[key].detach().to(t.dtype) for sd in state_dicts]
            if self._is_shared(key, t):
                want = tuple(t.shape)
            elif self._is_stacked(key):
                want = tuple(t.shape[1:])
            else:
                want = (t.shape[0] // self.num_models,) + tuple(t.shape[1:])
            for g, p in enumerate(parts):
                if tuple(p.shape) != want:
                    raise ValueError(f"per-model state dict {g}: {key!r} has shape {tuple(p.shape)}, this encoder "
                                     f"expects {want}")
            if key == "A":
                for p in parts[1:]:
                    if not torch.equal(p, parts[0]):
                        raise ValueError("the per-model adjacencies differ; a batched encoder shares one A")
                merged[key] = parts[0]
            elif key.endswith("num_batches_tracked"):
                merged[key] = self._merge_batch_counts(key, parts)
            elif self._is_stacked(key):
                merged[key] = torch.stack(parts, 0)
            else:
                merged[key] = torch.cat(parts, 0)
        if strict:
            extra = set().union(*(sd.keys() for sd in state_dicts)) - set(merged)
            if extra:
                raise KeyError(f"unexpected keys in per-model state dicts: {sorted(extra)[:5]}")
        return merged

    def _merge_batch_counts(self, key: str, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """One BatchNorm's num_batches_tracked for all G models. The stacked BN has one counter:
        counters that differ are merged to their maximum with a warning (they only count, unless
        momentum is None, where the counter sets the averaging factor: there they must agree)."""
        counts = [int(p) for p in parts]
        if len(set(counts)) > 1:
            bn = self.get_submodule(key.rsplit(".", 1)[0])
            if bn.momentum is None:
                raise ValueError(f"{key}: the per-model counters {counts} differ, and with momentum=None they set "
                                 "each model's running-average factor; a batched encoder has one counter per layer")
            warnings.warn(f"{key}: per-model counters {counts} differ; the batched encoder keeps one, "
                          f"{max(counts)}, for all models (it does not enter the maths at momentum "
                          f"{bn.momentum})", stacklevel=3)
        return max(parts, key=lambda p: int(p))

    def per_model_state_dicts(self) -> List[Dict[str, torch.Tensor]]:
        """G state dicts in the reference STGCN key layout (= official encoder layout)."""
        return self.split_state(self.stacked_state())

    def load_per_model_state_dicts(self, state_dicts: Sequence[Dict[str, torch.Tensor]], strict: bool = True):
        """Load G reference-layout state dicts (e.g. STGCN.state_dict() or official encoder dicts)."""
        return self.load_state_dict(self.merge_states(state_dicts, strict), strict=strict)

    def load_prefixed_state_dict(self, state_dict: Dict[str, torch.Tensor], prefixes: Sequence[str],
                                 strict: bool = True):
        """Load G encoders from one state dict holding them under `prefixes` (e.g. an official
        IKEM checkpoint: ['encoder_q', 'encoder_q_motion', 'encoder_q_bone', ...], see
        skelfast.models.official.OFFICIAL_SUFFIX); keys outside the prefixes are ignored."""
        per = [{k[len(p) + 1:]: v for k, v in state_dict.items() if k.startswith(p + ".")} for p in prefixes]
        for p, sd in zip(prefixes, per):
            if not sd:
                raise KeyError(f"no keys under prefix {p!r}")
        return self.load_per_model_state_dicts(per, strict=strict)

    def prefixed_state_dict(self, prefixes: Sequence[str]) -> Dict[str, torch.Tensor]:
        """The G encoders' state under `prefixes` (inverse of load_prefixed_state_dict)."""
        if len(prefixes) != self.num_models:
            raise ValueError(f"expected {self.num_models} prefixes, got {len(prefixes)}")
        return {f"{p}.{k}": v for p, sd in zip(prefixes, self.per_model_state_dicts()) for k, v in sd.items()}

    @classmethod
    def from_reference(cls, models: Sequence[STGCN], fused: bool = True, memory_format: str = "auto") -> "BatchedSTGCN":
        """A batched encoder holding copies of the weights (and BN buffers) of G reference STGCNs."""
        m0 = models[0]
        blocks = m0.st_gcn_networks
        fc = m0.fc
        if isinstance(fc, nn.Sequential):
            head, feature_dim, head_hidden, num_class = "mlp", fc[2].out_features, fc[0].out_features, None
        elif isinstance(fc, nn.Linear):
            head, feature_dim, head_hidden, num_class = "linear", fc.out_features, None, fc.out_features
        else:
            head, feature_dim, head_hidden, num_class = None, m0.hidden_dim, None, None
        dropout = blocks[1].tcn[4].p if len(blocks) > 1 else 0.0
        batched = cls(num_models=len(models), in_channels=m0.in_channels,
                      hidden_channels=blocks[0].tcn[2].out_channels, hidden_dim=m0.hidden_dim, head=head,
                      feature_dim=feature_dim, num_class=num_class, dropout=dropout, topology=m0.A,
                      edge_importance=m0.edge_importance is not None, head_hidden=head_hidden, init=None, fused=fused,
                      memory_format=memory_format)
        batched = batched.to(device=m0.A.device, dtype=next(m0.parameters()).dtype)
        batched.load_per_model_state_dicts([m.state_dict() for m in models])
        batched._copy_module_settings(models)
        batched.train(m0.training)
        return batched

    def _copy_module_settings(self, models: Sequence[STGCN]) -> None:
        """What a state dict does not carry: BatchNorm momentum / eps and each parameter's
        requires_grad. They must agree across the G models (one stacked module holds them)."""
        def agreed(name: str, values: list):
            if any(v != values[0] for v in values[1:]):
                raise ValueError(f"{name} differs between the reference models ({values}); a batched encoder "
                                 "holds one value for all of them")
            return values[0]

        for name, module in self.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                refs = [m.get_submodule(name) for m in models]
                module.momentum = agreed(f"{name}.momentum", [r.momentum for r in refs])
                module.eps = agreed(f"{name}.eps", [r.eps for r in refs])
        for name, param in self.named_parameters():
            param.requires_grad_(agreed(f"{name}.requires_grad", [m.get_parameter(name).requires_grad for m in models]))

    def to_reference(self, topology: Union[str, Topology, None] = None) -> List[STGCN]:
        """G reference STGCNs with this encoder's weights and buffers."""
        cfg = dict(self.config)
        topo = topology if topology is not None else cfg.pop("topology")
        cfg.pop("topology", None)
        if isinstance(topo, torch.Tensor):
            topo = "ntu25"  # placeholder; A is overwritten from the state dict below (V must match)
        param = next(self.parameters())
        models = []
        for sd in self.per_model_state_dicts():
            m = STGCN(**cfg, topology=topo, init=None).to(device=param.device, dtype=param.dtype)
            if m.A.shape != sd["A"].shape:
                raise ValueError("pass the topology of this encoder's adjacency to to_reference()")
            m.load_state_dict(sd)
            m.train(self.training)
            models.append(m)
        return models
