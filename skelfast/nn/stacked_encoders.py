"""StackedEncoders: the batched encoder as a drop-in for skelfast.reference.EncoderList.

Layer: model. A BatchedSTGCN whose state dict is written and read in the ModuleList layout of G
reference STGCNs (`'{g}.data_bn.weight'`, `'{g}.st_gcn_networks.0.gcn.conv.weight'`, ...). A model
built with stacked encoders (skelfast.models.build, backend 'skelfast') therefore saves and loads
exactly the checkpoints of the reference model (and, through skelfast.models.official, the
official ones); only the optimiser state, which follows the parameter tensors, is backend-specific.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from ..reference.moco import momentum_update_
from ..reference.stgcn import STGCN
from .batched_stgcn import BatchedSTGCN

__all__ = ["StackedEncoders"]


def _to_per_model_layout(module: "StackedEncoders", state_dict: Dict[str, torch.Tensor], prefix: str,
                         local_metadata) -> None:
    """state-dict post hook: stacked keys under `prefix` -> `prefix{g}.key` (in place)."""
    stacked = {k[len(prefix):]: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(prefix)]}
    for g, part in enumerate(module.split_state(stacked, copy=False)):
        for key, t in part.items():
            state_dict[f"{prefix}{g}.{key}"] = t


def _from_per_model_layout(module: "StackedEncoders", state_dict: Dict[str, torch.Tensor], prefix: str,
                           local_metadata, strict, missing_keys, unexpected_keys, error_msgs) -> None:
    """load-state-dict pre hook: `prefix{g}.key` -> stacked `prefix key` (in place). Keys already in
    the stacked layout pass through; per-model keys the module does not have stay and are reported
    as unexpected by load_state_dict."""
    per: List[Dict[str, torch.Tensor]] = [dict() for _ in range(module.num_models)]
    taken = []
    for k in list(state_dict):
        if not k.startswith(prefix):
            continue
        head, _, sub = k[len(prefix):].partition(".")
        if head.isdigit() and int(head) < module.num_models and sub in module.stacked_keys:
            per[int(head)][sub] = state_dict[k]
            taken.append(k)
    if not taken:
        return
    # A key given for some models only: the others keep their current values (what a ModuleList of
    # encoders does under strict=False) and are reported missing (so strict=True still fails).
    current = None
    for key in set().union(*per):
        lacking = [g for g in range(module.num_models) if key not in per[g]]
        if lacking:
            current = module.per_model_state_dicts() if current is None else current
            for g in lacking:
                per[g][key] = current[g][key]
                missing_keys.append(f"{prefix}{g}.{key}")
    try:
        merged = module.merge_states(per, strict=False)
    except ValueError as e:
        # Raised here, before this module's tensors are copied: appended to error_msgs, the cause came last in a
        # ~19 kB message that listed every stacked key as missing and every per-model key as unexpected.
        raise RuntimeError(f"Error(s) in loading state_dict for {type(module).__name__}: "
                           f"{prefix or 'encoders'}: {e}") from None
    for k in taken:
        del state_dict[k]
    state_dict.update((prefix + k, v) for k, v in merged.items())


class StackedEncoders(BatchedSTGCN):
    """G encoders as one BatchedSTGCN with the per-model state-dict layout of EncoderList.

    state_dict() values are views of the stacked tensors (in-place writes reach the module, as
    with nn.Module; torch.save writes each stacked storage once). keep_vars=True cannot return the
    per-model parts as Parameters: they are slices. per_model_state_dicts() returns copies.

    forward(xs (G, N, C, T, V, M)) -> (head out (G, N, F), pooled (G, N, H)), equal to G reference
    STGCNs with the same weights (tests/test_batched_encoder.py, tests/test_models_fused.py).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stacked_keys = frozenset(self.stacked_state())
        self.register_state_dict_post_hook(_to_per_model_layout)
        self.register_load_state_dict_pre_hook(_from_per_model_layout)

    @classmethod
    def build(cls, num_models: int, **encoder_kwargs) -> "StackedEncoders":
        """G encoders initialised exactly as EncoderList.build(num_models, **encoder_kwargs) would be:
        the G reference STGCNs are drawn from the same random stream, then stacked, so both backends
        start from the same weights for the same seed."""
        references = [STGCN(**encoder_kwargs) for _ in range(num_models)]
        with torch.random.fork_rng(devices=[]):   # the stacked module's own (discarded) init draws nothing
            return cls.from_reference(references)

    @torch.no_grad()
    def momentum_update_(self, source: "StackedEncoders", m: float, which: Optional[Sequence[int]] = None) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q for the models `which` (default all), method.md §5.1.

        Elementwise, so the stacked update rounds exactly like G per-model updates. Every parameter
        is G equal chunks along dim 0 (concatenated or stacked), so a subset is a list of row views.
        """
        G = self.num_models
        which = list(range(G)) if which is None else sorted(set(which))
        if any(not 0 <= g < G for g in which):   # a negative index would silently pick model G+g
            raise ValueError(f"momentum_update_: which must hold model indices in [0, {G}), got {which}")
        keys, queries = [], []
        for pk, pq in zip(self.parameters(), source.parameters()):
            if which == list(range(G)):
                keys.append(pk.data)
                queries.append(pq.data)
            else:
                # unflatten, not view: a channels-last weight's chunks are not rows of a (G, -1) view
                k, q = pk.data.unflatten(0, (G, -1)), pq.data.unflatten(0, (G, -1))
                keys += [k[g] for g in which]
                queries += [q[g] for g in which]
        momentum_update_(keys, queries, m)
