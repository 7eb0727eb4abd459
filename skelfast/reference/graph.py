"""ST-GCN graph: the 'spatial' partition adjacency built from a topology's edge list (method.md §4.1).

Layer: reference (plain PyTorch). The adjacency is a fixed (K=3, V, V) buffer of every encoder.
"""
from __future__ import annotations

from typing import Union

import torch

from ..topology import Topology, get_topology

__all__ = ["hop_distance", "normalize_columns", "spatial_adjacency"]


def hop_distance(num_nodes: int, edges, max_hop: int = 1) -> torch.Tensor:
    """Graph hop distance, capped: hop[i, j] in {0, 1, .., max_hop} or +inf (method.md §4.1).

    Args:
        num_nodes: V.
        edges: iterable of undirected (i, j) pairs, 0-based.
        max_hop: distances beyond it are +inf (the official code uses 1).
    Returns:
        (V, V) float64 tensor.
    """
    adj = torch.eye(num_nodes, dtype=torch.float64)
    if len(edges):
        e = torch.tensor(list(edges), dtype=torch.long)
        adj[e[:, 0], e[:, 1]] = 1.0
        adj[e[:, 1], e[:, 0]] = 1.0
    hop = torch.full((num_nodes, num_nodes), float("inf"), dtype=torch.float64)
    # (I + Adj)^d > 0 marks nodes within d hops; smaller d wins, so fill from max_hop down to 0.
    for d in range(max_hop, -1, -1):
        reach = torch.linalg.matrix_power(adj, d) > 0
        hop[reach] = float(d)
    return hop


def normalize_columns(adj: torch.Tensor) -> torch.Tensor:
    """AD[i, j] = Adj[i, j] / deg[j] with deg[j] = sum_i Adj[i, j] (columns sum to 1; §4.1)."""
    deg = adj.sum(0)
    inv = torch.where(deg > 0, 1.0 / deg.clamp_min(1e-30), torch.zeros_like(deg))
    return adj * inv.unsqueeze(0)


def spatial_adjacency(topology: Union[str, Topology] = "ntu25", max_hop: int = 1) -> torch.Tensor:
    """The 'spatial' partition adjacency A of ST-GCN (method.md §4.1), float32 (3, V, V).

    A[k, v, w]: row v is the source joint, column w the target joint, as in the aggregation
    out[w] = sum_k sum_v y[k, v] * A[k, v, w].

      A[0] = root   (self-loops, hop 0)
      A[1] = root + close (hop 1)
      A[2] = further (hop 1)

    For an entry (j, i) at hop h: 'root' if hop[j, c] == hop[i, c], 'close' if hop[j, c] > hop[i, c],
    'further' otherwise, where c is the centre. Distances beyond max_hop are +inf and inf == inf
    counts as 'same distance', so edges between two far joints land in A[1] (§4.1).
    """
    topo = get_topology(topology)
    V, c = topo.num_joints, topo.center
    hop = hop_distance(V, topo.edges, max_hop)
    ad = normalize_columns((hop <= max_hop).to(torch.float64))
    dc = hop[:, c]
    row_dc, col_dc = dc.unsqueeze(1), dc.unsqueeze(0)  # hop[j, c] for row j, hop[i, c] for column i
    same = row_dc == col_dc
    closer = row_dc > col_dc
    parts = []
    for h in range(max_hop + 1):
        at_h = hop == h
        root = torch.where(at_h & same, ad, 0.0)
        close = torch.where(at_h & closer, ad, 0.0)
        further = torch.where(at_h & ~same & ~closer, ad, 0.0)
        if h == 0:
            parts.append(root)
        else:
            parts.append(root + close)
            parts.append(further)
    return torch.stack(parts).to(torch.float32)
