"""skelfast.ops.dropout_add_relu: the fused ST-GCN block epilogue ReLU(dropout(x) + residual).

Every ST-GCN block ends with Dropout, the residual add and ReLU (method.md §4.2). Eager PyTorch
runs them as four passes over the block's largest activation, and on CPU dropout's `bernoulli_`
alone costs ~13 ns per element on one core (profiled: 19% of a phase-1 step of the batched
encoders). `torch.ops.skelfast.dropout_add_relu` (csrc/epilogue.cpp, CPU kernel in
csrc/cpu/epilogue_cpu.cpp) does it in one pass with a counter-based mask (a hash of a seed and the
element offset, csrc/include/skelfast/dropout_math.h): no mask is stored, the backward recomputes it.

The mask follows the same Bernoulli(1 - p) law as torch's dropout but not torch's random stream:
the seed is drawn from torch's CPU generator (so `torch.manual_seed` and a restored RNG state
reproduce it), the bits come from the hash. On CUDA the kernels are Triton
(skelfast/triton/epilogue.py) with the same hash, so one seed and one layout give the same mask
on both devices; they also take bf16/fp16 there. The plain PyTorch ops run while torch.compile
traces (Inductor fuses these ops itself), with SKELFAST_BACKEND=torch, on CUDA without triton, in
low precision on CPU, and while a CUDA graph is captured with p > 0 (a seed argument would be
baked into the graph: the same mask on every replay).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import _extension
from ._args import check_real
from ._devices import check_one_device
from . import _backend
from ._first_order import first_order
from ._layout import memory_format

__all__ = ["dropout_add_relu", "dropout_add_relu_composite"]

_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_TRITON_ON_CUDA = False   # set below when the Triton launchers are the ops' CUDA kernels


def dropout_add_relu_composite(x: torch.Tensor, residual: Optional[torch.Tensor], p: float,
                               training: bool = True) -> torch.Tensor:
    """ReLU(dropout(x, p) + residual) with PyTorch ops (torch's dropout and random stream)."""
    y = F.dropout(x, p, training) if (training and p > 0) else x
    return F.relu(y if residual is None else y + residual)


def _grad_layout(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """grad as the backward kernel reads it: contiguous along out's innermost memory dimension (C
    for channels-last), any other strides. The gradient of the global pooling that follows the last
    block is a stride-0 broadcast over (T, V) and passes without materialising a copy."""
    inner = 1 if memory_format(out) is torch.channels_last else out.dim() - 1
    if out.dim() == 0 or grad.shape[inner] == 1 or grad.stride(inner) == 1:
        return grad
    return grad.contiguous(memory_format=memory_format(out))


def kernel_applies(x: torch.Tensor, p: float) -> bool:
    """Whether x's device and dtype run the epilogue kernels (C++ on CPU, Triton on CUDA: see the
    module docstring) rather than the PyTorch ops; p is the effective dropout probability."""
    if not _HAS_KERNEL or torch.compiler.is_compiling() or _backend.resolve(x.device) == "torch":
        return False
    if x.dim() > 8:       # the kernels index at most 8 dims (their backward refused more, after the forward ran)
        return False
    if x.device.type == "cpu":
        return x.dtype in _CPU_DTYPES
    return (x.device.type == "cuda" and _TRITON_ON_CUDA and x.dtype in _CUDA_DTYPES
            and not (p > 0 and torch.cuda.is_current_stream_capturing()))


def _kernel_applies(x: torch.Tensor, residual: Optional[torch.Tensor], p: float) -> bool:
    return (kernel_applies(x, p)
            and (residual is None or (residual.dtype == x.dtype and residual.shape == x.shape)))


def dropout_add_relu(x: torch.Tensor, residual: Optional[torch.Tensor] = None, p: float = 0.0,
                     training: bool = True, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """ReLU(dropout(x, p) + residual), differentiable w.r.t. x and residual.

    Args:
        x: any shape (a block's (B, C, T, V) activations), float.
        residual: x's shape, or None (no residual, the first block).
        p: dropout probability in [0, 1]; dropout is active only when `training`.
        generator: CPU generator the kernel's seed is drawn from (default: torch's global one; on
            CUDA too).
    Returns:
        x's shape, in x's memory format (contiguous or channels-last).
    """
    check_real("dropout_add_relu", "p", p, 0, 1)
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"dropout_add_relu: residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    if not _kernel_applies(x, residual, p if training else 0.0):
        return dropout_add_relu_composite(x, residual, p, training)
    x, residual, p, seed = kernel_inputs(x, residual, p, training, generator)
    return torch.ops.skelfast.dropout_add_relu(x, residual, p, seed)


def kernel_inputs(x: torch.Tensor, residual: Optional[torch.Tensor], p: float, training: bool,
                  generator: Optional[torch.Generator]):
    """(x, residual, p, seed) as the CPU kernels of the epilogue ops take them: x in its own memory
    format (contiguous or channels-last), the residual in x's, p = 0 outside training, and the
    dropout seed drawn from `generator` (torch's global one by default) only when p > 0."""
    p = float(p) if training else 0.0
    fmt = memory_format(x)
    x = x.contiguous(memory_format=fmt)
    if residual is not None:
        residual = residual.contiguous(memory_format=fmt)
    seed = int(torch.randint(-2**63, 2**63 - 1, (), generator=generator)) if p > 0 else 0
    return x, residual, p, seed


def _register() -> None:
    @torch.library.register_fake("skelfast::dropout_add_relu")
    def _fake(x, residual, p, seed):
        check_one_device("dropout_add_relu", x=x, residual=residual)
        return torch.empty_like(x)

    @torch.library.register_fake("skelfast::dropout_add_relu_backward")
    def _backward_fake(grad_out, out, p, seed, residual_grad):
        check_one_device("dropout_add_relu_backward", grad_out=grad_out, out=out)
        return torch.empty_like(out), (torch.empty_like(out) if residual_grad else out.new_empty((0,)))

    def _setup_context(ctx, inputs, output):
        _, residual, p, seed = inputs
        ctx.p, ctx.seed, ctx.has_residual = p, seed, residual is not None
        ctx.save_for_backward(output)   # ReLU's mask; the dropout mask is recomputed from the seed

    @first_order("skelfast::dropout_add_relu")
    def _backward(ctx, grad_out):
        (out,) = ctx.saved_tensors
        need_res = ctx.has_residual and ctx.needs_input_grad[1]
        gx, gres = torch.ops.skelfast.dropout_add_relu_backward(_grad_layout(grad_out, out), out, ctx.p, ctx.seed,
                                                                need_res)
        return gx, (gres if need_res else None), None, None

    torch.library.register_autograd("skelfast::dropout_add_relu", _backward, setup_context=_setup_context)


def _triton_forward(x, residual, p, seed):
    from ..triton.epilogue import dropout_add_relu_forward
    return dropout_add_relu_forward(x, residual, p, seed)


def _triton_backward(grad_out, out, p, seed, residual_grad):
    from ..triton.epilogue import dropout_add_relu_backward
    return dropout_add_relu_backward(grad_out, out, p, seed, residual_grad)


_HAS_KERNEL = _extension.has_cpu_kernels() and hasattr(torch.ops.skelfast, "dropout_add_relu")
if _HAS_KERNEL:
    _register()
    _TRITON_ON_CUDA = _backend.register_triton_for_cuda({"dropout_add_relu": _triton_forward,
                                                         "dropout_add_relu_backward": _triton_backward})
    _backend.register_triton_kernel("dropout_add_relu", _triton_forward)
    _backend.register_triton_kernel("dropout_add_relu_backward", _triton_backward)
