"""MoCo machinery (method.md §5.1): momentum update of key encoders and feature queues.

Layer: reference (plain PyTorch). The momentum update is one multi-tensor (_foreach) update over
all parameters instead of the official per-parameter loop (§9.3); queue pointers live on the host
as Python ints, so no GPU->CPU sync is needed (§9.5).
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["momentum_update_", "enqueue_", "QueueBank", "init_queue"]


@torch.no_grad()
def momentum_update_(key_params: Sequence[torch.Tensor], query_params: Sequence[torch.Tensor], m: float) -> None:
    """theta_k <- m * theta_k + (1 - m) * theta_q for every pair, in place (method.md §5.1).

    Args:
        key_params: key-encoder parameters (updated in place; no duplicates).
        query_params: matching query-encoder parameters, same order and shapes.
        m: momentum (0.999 in every config).
    """
    key_params, query_params = list(key_params), list(query_params)
    if not 0.0 <= m <= 1.0:       # also refuses NaN (which would turn every key weight into NaN)
        raise ValueError(f"momentum_update_: m must be in [0, 1], got {m}")
    if len(key_params) != len(query_params):
        raise ValueError(f"momentum_update_: {len(key_params)} key tensors vs {len(query_params)} query tensors")
    if not key_params:
        return
    keys = [p.data if isinstance(p, nn.Parameter) else p for p in key_params]
    queries = [p.data if isinstance(p, nn.Parameter) else p for p in query_params]
    torch._foreach_mul_(keys, m)
    torch._foreach_add_(keys, queries, alpha=1.0 - m)


def init_queue(num_queues: int, dim: int, size: int, generator=None) -> torch.Tensor:
    """(G, D, K) queues of randn columns, each column L2-normalised (method.md §5.1)."""
    q = torch.randn(num_queues, dim, size, generator=generator)
    return F.normalize(q, dim=1)


@torch.no_grad()
def enqueue_(queue: torch.Tensor, keys: torch.Tensor, ptr: int) -> int:
    """Write keys into queue columns [ptr, ptr + N) and return the advanced pointer (method.md §5.1).

    Args:
        queue: (D, K) or stacked (G, D, K), written in place.
        keys: (N, D) or stacked (G, N, D), matching queue's leading dims.
        ptr: host-side int pointer.
    Returns:
        (ptr + N) % K as a Python int.
    """
    K, N = queue.shape[-1], keys.shape[-2]
    # explicit errors, not asserts: python -O must not turn a bad call into a silent partial write
    if N < 1:
        raise ValueError(f"enqueue_: keys hold no rows (N=0); nothing to enqueue")
    if K % N:
        raise ValueError(f"enqueue_: queue size K={K} must be a multiple of the batch size N={N} (method.md §5.1)")
    if not 0 <= ptr <= K - N:
        raise ValueError(f"enqueue_: queue pointer {ptr} + batch {N} runs past the queue size K={K}")
    queue[..., ptr:ptr + N] = keys.transpose(-1, -2).to(queue.dtype)
    return (ptr + N) % K


class QueueBank(nn.Module):
    """G stacked queues sharing one host-side pointer: buffer `queue` (G, D, K), int `ptr`.

    All queues of one model are always enqueued together (method.md §5.6 step 7, §6.1 'After the
    step'), so one pointer suffices. The pointer is saved in the state dict as extra state.
    """

    def __init__(self, num_queues: int, dim: int, size: int):
        super().__init__()
        self.register_buffer("queue", init_queue(num_queues, dim, size))
        self.ptr = 0

    @property
    def size(self) -> int:
        return self.queue.shape[-1]

    def enqueue_(self, keys: torch.Tensor) -> int:
        """keys (G, N, D) -> written at the pointer; returns the new pointer."""
        self.ptr = enqueue_(self.queue, keys.detach(), self.ptr)
        return self.ptr

    def get_extra_state(self) -> Dict[str, Any]:
        return {"ptr": int(self.ptr)}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        self.ptr = int(state["ptr"])

    def extra_repr(self) -> str:
        G, D, K = self.queue.shape
        return f"num_queues={G}, dim={D}, size={K}, ptr={self.ptr}"


def parameter_pairs(key_modules: Sequence[nn.Module], query_modules: Sequence[nn.Module]):
    """Flatten matching (key, query) parameter lists of several encoder pairs, keys deduplicated."""
    keys: List[torch.Tensor] = []
    queries: List[torch.Tensor] = []
    seen = set()
    for mk, mq in zip(key_modules, query_modules):
        for pk, pq in zip(mk.parameters(), mq.parameters()):
            if id(pk) in seen:
                continue
            seen.add(id(pk))
            keys.append(pk)
            queries.append(pq)
    return keys, queries
