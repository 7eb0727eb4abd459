"""Multi-process training through torchrun: environment detection, DDP wrapping, key gathering.

Layer: training. Contract (documented in README-level terms in the `pretrain` help):

* `torchrun --nproc_per_node=P python -m skelfast.train pretrain ...` splits the global batch
  data.batch_size into P equal slices (rank r takes rows r*b..(r+1)*b-1 of each global batch).
* Gradients are averaged by DistributedDataParallel, so with per-sample-independent layers the step
  equals a single-process step on the global batch.
* MoCo queues: every rank all-gathers the keys of all ranks (rank order = global batch order)
  *before* enqueueing, so all queues hold the same global-batch keys at the same host-int pointer
  and stay identical across ranks (the official code writes only its own slice; method.md §5.1
  notes that only single-GPU semantics were meaningful there).
* Batch norm: by default every rank normalises its own slice with its own batch statistics (no
  "shuffled BN": the official code does not shuffle either, and MoCo's BN-leak concern is addressed
  by the separate key encoders); BN running statistics are rank-local and rank 0's are saved.
  distributed.sync_bn=true converts to SyncBatchNorm (GPU only) for global batch statistics.
* Rank 0 logs and writes checkpoints; the others wait at a barrier.
"""
from __future__ import annotations

import datetime
import inspect
import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = ["DistInfo", "init_distributed", "gather_cat", "wrap_ddp", "barrier", "any_flag", "cleanup"]


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_pref: str = "auto", backend: Optional[str] = None) -> DistInfo:
    """Start the process group if launched by torchrun (WORLD_SIZE > 1) or already initialised."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and device_pref != "cpu"
    backend = backend or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistInfo(rank, world, local, True)


def gather_cat(t: torch.Tensor, info: DistInfo, dim: int = 0) -> torch.Tensor:
    """All-gather `t` from every rank and concatenate along `dim` in rank order (no gradient)."""
    if not info.enabled or info.world == 1:
        return t
    t = t.detach().contiguous()
    parts = [torch.empty_like(t) for _ in range(info.world)]
    dist.all_gather(parts, t)
    return torch.cat(parts, dim=dim)


def wrap_ddp(model: nn.Module, info: DistInfo, device: torch.device, sync_bn: bool = False,
             find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel around `model` (returned unchanged when not distributed).

    find_unused_parameters (Task.unused_parameters): pretraining's IKEM heads get no gradient in
    phase 1 (method.md §5.2), and the phase switches mid-run (so DDP's one-time note that a phase-2
    step found no unused parameter is expected there); the other tasks train every parameter in
    every step, and DDP then skips its per-step search of the autograd graph.

    Buffers are not synchronised before each forward: BN statistics stay rank-local and the
    (identical) queues are never overwritten. At construction every rank holds the same buffers
    (same seed, or the same checkpoint), so torch >= 2.13's forward_sync_buffers=False, which still
    copies rank 0's buffers once then, changes nothing; older torch has only broadcast_buffers=False.
    """
    if not info.enabled or info.world == 1:
        return model
    if sync_bn:
        if device.type != "cuda":
            raise ValueError("distributed.sync_bn=true needs CUDA devices (SyncBatchNorm has no CPU kernel); "
                             "use the default per-rank BN on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for p in model.parameters():
        if p.requires_grad:
            p.register_hook(_grad_in_param_strides(p))
    ids = [device.index] if device.type == "cuda" else None
    ddp_params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    no_buffer_sync = {"forward_sync_buffers" if "forward_sync_buffers" in ddp_params else "broadcast_buffers": False}
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters,
                                               **no_buffer_sync)


def _grad_in_param_strides(p: torch.Tensor):
    """A gradient hook that gives a gradient the strides of its parameter where the two differ only
    in size-1 dimensions (the same memory order, so no copy).

    oneDNN's weight gradient of a 1x1 convolution over channels-last activations comes back with
    channels-last strides, e.g. (64, 1, 64, 64) for a (1536, 64, 1, 1) weight strided (64, 1, 1, 1).
    Autograd's layout contract ignores size-1 dimensions and keeps it as .grad, but DDP compares
    every stride with its bucket view and warns each run that the mismatch "may impair performance".
    """
    def hook(g: torch.Tensor) -> torch.Tensor:
        want = p.stride()
        if g.layout is not torch.strided or g.shape != p.shape or g.stride() == want:
            return g
        if all(gs == ws for n, gs, ws in zip(g.shape, g.stride(), want) if n > 1):
            return g.as_strided(g.shape, want)
        return g
    return hook


def barrier(info: DistInfo) -> None:
    if info.enabled and info.world > 1:
        dist.barrier()


def any_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank if `flag` is True on any rank (e.g. Ctrl-C seen by one process)."""
    if not info.enabled or info.world == 1:
        return flag
    dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1 if flag else 0], device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
