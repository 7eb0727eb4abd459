"""Test helpers for tests/reference: tiny configs, an official-layout state-dict builder and an
independent functional ST-GCN that reads official keys (written from method.md §4.1-§4.2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from skelfast.reference.graph import spatial_adjacency

TINY = dict(hidden_channels=4, hidden_dim=16, feature_dim=8, queue_size=16, dropout=0.0)
TINY_LE = dict(hidden_channels=4, hidden_dim=16, dropout=0.0)

# method.md §4.2 table: (Cin, Cout, stride) in units of hidden channels h; 'in' and 'hd' are symbolic.
_BLOCKS = [("in", 1, 1), (1, 1, 1), (1, 1, 1), (1, 1, 1), (1, 2, 2), (2, 2, 1), (2, 2, 1), (2, 4, 2), (4, 4, 1),
           (4, "hd", 1)]


def block_dims(in_channels, h, hd):
    out = []
    for ci, co, s in _BLOCKS:
        cin = in_channels if ci == "in" else ci * h
        cout = hd if co == "hd" else co * h
        out.append((cin, cout, s))
    return out


def _bn(sd, p, c, g):
    sd[p + "weight"] = 1 + 0.1 * torch.randn(c, generator=g)
    sd[p + "bias"] = 0.1 * torch.randn(c, generator=g)
    sd[p + "running_mean"] = 0.1 * torch.randn(c, generator=g)
    sd[p + "running_var"] = 0.5 + torch.rand(c, generator=g)
    sd[p + "num_batches_tracked"] = torch.tensor(7)


def official_encoder_state(prefix, in_channels, h, hd, head, g, V=25):
    """Random state of one official `net/st_gcn.py Model` under `prefix` (e.g. 'encoder_q_bone.').

    head: ('mlp', hidden, out) -> fc.0 / fc.2 (pretraining and student heads), ('linear', out) -> fc.
    """
    sd = {prefix + "A": spatial_adjacency("ntu25" if V == 25 else "coco17")}
    _bn(sd, prefix + "data_bn.", in_channels * V, g)
    for i, (cin, cout, s) in enumerate(block_dims(in_channels, h, hd)):
        b = f"{prefix}st_gcn_networks.{i}."
        sd[b + "gcn.conv.weight"] = 0.3 * torch.randn(3 * cout, cin, 1, 1, generator=g)
        sd[b + "gcn.conv.bias"] = 0.1 * torch.randn(3 * cout, generator=g)
        _bn(sd, b + "tcn.0.", cout, g)
        sd[b + "tcn.2.weight"] = 0.1 * torch.randn(cout, cout, 9, 1, generator=g)
        sd[b + "tcn.2.bias"] = 0.1 * torch.randn(cout, generator=g)
        _bn(sd, b + "tcn.3.", cout, g)
        if i > 0 and not (cin == cout and s == 1):
            sd[b + "residual.0.weight"] = 0.3 * torch.randn(cout, cin, 1, 1, generator=g)
            sd[b + "residual.0.bias"] = 0.1 * torch.randn(cout, generator=g)
            _bn(sd, b + "residual.1.", cout, g)
    for i in range(10):
        sd[f"{prefix}edge_importance.{i}"] = 0.5 + torch.rand(3, V, V, generator=g)
    if head[0] == "mlp":
        _, mid, out = head
        sd[prefix + "fc.0.weight"] = 0.2 * torch.randn(mid, hd, generator=g)
        sd[prefix + "fc.0.bias"] = 0.1 * torch.randn(mid, generator=g)
        sd[prefix + "fc.2.weight"] = 0.2 * torch.randn(out, mid, generator=g)
        sd[prefix + "fc.2.bias"] = 0.1 * torch.randn(out, generator=g)
    else:
        sd[prefix + "fc.weight"] = 0.2 * torch.randn(head[1], hd, generator=g)
        sd[prefix + "fc.bias"] = 0.1 * torch.randn(head[1], generator=g)
    return sd


def functional_stgcn(sd, prefix, x):
    """Official ST-GCN forward in eval mode from an official-layout state dict (method.md §4.2).

    x (N, C, T, V, M) -> (head output, pooled feature). Aggregation written as per-subset matmuls.
    """
    def bn(y, p):
        return F.batch_norm(y, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"],
                            training=False, eps=1e-5)

    N, C, T, V, M = x.shape
    y = bn(x.permute(0, 4, 3, 1, 2).reshape(N * M, V * C, T), prefix + "data_bn.")
    y = y.view(N, M, V, C, T).permute(0, 1, 3, 4, 2).reshape(N * M, C, T, V)
    A = sd[prefix + "A"]
    strides = [1, 1, 1, 1, 2, 1, 1, 2, 1, 1]
    for i in range(10):
        b = f"{prefix}st_gcn_networks.{i}."
        s = strides[i]
        if i == 0:
            res = 0
        elif b + "residual.0.weight" in sd:
            res = bn(F.conv2d(y, sd[b + "residual.0.weight"], sd[b + "residual.0.bias"], stride=(s, 1)),
                     b + "residual.1.")
        else:
            res = y
        z = F.conv2d(y, sd[b + "gcn.conv.weight"], sd[b + "gcn.conv.bias"])
        B, KC, Tc, _ = z.shape
        z = z.view(B, 3, KC // 3, Tc, V)
        Ae = A * sd[f"{prefix}edge_importance.{i}"]
        z = sum(z[:, k] @ Ae[k] for k in range(3))  # (B, Cout, T, V) @ (V, V): sum over source v
        z = F.relu(bn(z, b + "tcn.0."))
        z = bn(F.conv2d(z, sd[b + "tcn.2.weight"], sd[b + "tcn.2.bias"], stride=(s, 1), padding=(4, 0)), b + "tcn.3.")
        y = F.relu(z + res)
    h = y.mean(dim=(2, 3)).view(N, M, -1).mean(1)
    if prefix + "fc.0.weight" in sd:
        out = F.linear(F.relu(F.linear(h, sd[prefix + "fc.0.weight"], sd[prefix + "fc.0.bias"])),
                       sd[prefix + "fc.2.weight"], sd[prefix + "fc.2.bias"])
    else:
        out = F.linear(h, sd[prefix + "fc.weight"], sd[prefix + "fc.bias"])
    return out, h


def skeleton(N=4, T=12, V=25, M=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, 3, T, V, M, generator=g)


def unit(*shape, dim=-1, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=dim).to(dtype)
