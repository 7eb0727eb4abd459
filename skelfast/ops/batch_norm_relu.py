"""skelfast.ops.batch_norm_relu: ReLU(dropout(BatchNorm(x)) + residual) as one op.

An ST-GCN block's temporal unit is BN, ReLU, conv, BN, Dropout, then the residual add and ReLU
(method.md §4.2). Eager PyTorch spends full passes over the activation on each step: BN forward
writes its output and the next op reads it back, and BN backward re-reads the gradient that the
ReLU / epilogue backward has just written. `torch.ops.skelfast.batch_norm_relu` (csrc/
batch_norm_relu.cpp, CPU kernel in csrc/cpu/batch_norm_relu_cpu.cpp) covers both BN+ReLU pairs of
a block: forward = a statistics pass plus one normalise-drop-add-rectify pass, backward = one
reduction pass plus one pass writing grad_x. The dropout mask is the counter-based mask of
`dropout_add_relu` (same seed and layout, same mask), recomputed in the backward, never stored.

The running statistics are updated here, as `F.batch_norm` does (momentum, unbiased variance).
On CUDA the kernels are Triton (skelfast/triton/epilogue.py: same passes, same mask), and there
bf16/fp16 x with fp32 affine parameters and statistics (the autocast path) runs them too. The
plain PyTorch ops (`batch_norm_relu_composite`) run where `dropout_add_relu` runs them (see
skelfast.ops.epilogue: torch.compile tracing, SKELFAST_BACKEND=torch, no triton on CUDA, CUDA
graph capture with p > 0) and without affine parameters.
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
from .epilogue import _grad_layout, dropout_add_relu_composite, kernel_applies, kernel_inputs

__all__ = ["batch_norm_relu", "batch_norm_relu_composite"]


def batch_norm_relu_composite(x: torch.Tensor, running_mean: Optional[torch.Tensor],
                              running_var: Optional[torch.Tensor], weight: Optional[torch.Tensor],
                              bias: Optional[torch.Tensor], training: bool, momentum: float, eps: float,
                              residual: Optional[torch.Tensor] = None, p: float = 0.0) -> torch.Tensor:
    """ReLU(dropout(F.batch_norm(x, ...), p) + residual) with PyTorch ops (torch's dropout stream)."""
    y = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    return dropout_add_relu_composite(y, residual, p, training)


def param_dtype(x: torch.Tensor) -> torch.dtype:
    """Dtype the kernels take affine parameters and statistics in: x's (fp32/fp64), fp32 for bf16/fp16 x."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def _kernel_applies(x, running_mean, running_var, weight, bias, residual, training, p) -> bool:
    if not (_HAS_KERNEL and x.dim() >= 2 and x.numel() > 0 and kernel_applies(x, p if training else 0.0)):
        return False
    if weight is None or bias is None or (not training and (running_mean is None or running_var is None)):
        return False
    vectors = [weight, bias] + ([running_mean, running_var] if running_mean is not None else [])
    return (all(v.dtype == param_dtype(x) and v.device == x.device for v in vectors)
            and (residual is None or (residual.dtype == x.dtype and residual.shape == x.shape)))


def batch_norm_relu(x: torch.Tensor, running_mean: Optional[torch.Tensor], running_var: Optional[torch.Tensor],
                    weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], training: bool = False,
                    momentum: float = 0.1, eps: float = 1e-5, residual: Optional[torch.Tensor] = None,
                    p: float = 0.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """ReLU(dropout(batch_norm(x), p) + residual), arguments as `F.batch_norm` plus the epilogue's.

    Args:
        x: (B, C, ...) float; channels are dim 1.
        running_mean, running_var: (C,) or None; updated in place when `training` (momentum,
            unbiased variance), used for normalising otherwise.
        weight, bias: (C,) affine parameters (None runs the PyTorch path).
        residual: x's shape, or None. p: dropout probability, active only when `training`.
        generator: CPU generator the dropout seed is drawn from (default: torch's global one; on
            CUDA too).
    Returns:
        x's shape, in x's memory format (contiguous or channels-last).
    """
    check_real("batch_norm_relu", "p", p, 0, 1)
    check_real("batch_norm_relu", "momentum", momentum)
    check_real("batch_norm_relu", "eps", eps, 0)
    if x.dim() < 2:
        raise ValueError(f"batch_norm_relu: x must be (B, C, ...), got shape {tuple(x.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"batch_norm_relu: residual shape {tuple(residual.shape)} != x shape {tuple(x.shape)}")
    C = x.shape[1]
    for name, v in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        # before anything runs: a late failure left the running statistics half-updated
        if v is not None and tuple(v.shape) != (C,):
            raise ValueError(f"batch_norm_relu: {name} must have shape (C,) = ({C},), got {tuple(v.shape)}")
    if not _kernel_applies(x, running_mean, running_var, weight, bias, residual, training, p):
        return batch_norm_relu_composite(x, running_mean, running_var, weight, bias, training, momentum, eps,
                                         residual, p)
    values_per_channel = x.numel() // x.shape[1]
    if training and values_per_channel <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
    x, residual, p, seed = kernel_inputs(x, residual, p, training, generator)
    stats = (None, None) if training else (running_mean.contiguous(), running_var.contiguous())
    out, mean, _, var = torch.ops.skelfast.batch_norm_relu(x, weight.contiguous(), bias.contiguous(), *stats,
                                                           residual, float(eps), p, seed)
    if training and running_mean is not None:
        with torch.no_grad():   # as F.batch_norm: unbiased variance in the running estimate
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            running_var.mul_(1 - momentum).add_(var * (values_per_channel / (values_per_channel - 1)),
                                                alpha=momentum)
    return out


def _register() -> None:
    @torch.library.register_fake("skelfast::batch_norm_relu")
    def _fake(x, weight, bias, mean, var, residual, eps, p, seed):
        check_one_device("batch_norm_relu", x=x, weight=weight, bias=bias, running_mean=mean, running_var=var,
                         residual=residual)
        C = x.shape[1]   # statistics in the parameters' dtype (fp32 for bf16/fp16 x on CUDA)
        return torch.empty_like(x), weight.new_empty((C,)), weight.new_empty((C,)), weight.new_empty((C,))

    @torch.library.register_fake("skelfast::batch_norm_relu_backward")
    def _backward_fake(grad_out, out, x, weight, mean, invstd, batch_stats, p, seed, residual_grad):
        check_one_device("batch_norm_relu_backward", grad_out=grad_out, out=out, x=x, weight=weight, mean=mean,
                         invstd=invstd)
        C = out.shape[1]
        gres = torch.empty_like(out) if residual_grad else out.new_empty((0,))
        return torch.empty_like(out), weight.new_empty((C,)), weight.new_empty((C,)), gres

    def _setup_context(ctx, inputs, output):
        x, weight, _, mean_in, _, residual, _, p, seed = inputs
        out, mean, invstd, var = output
        ctx.p, ctx.seed, ctx.has_residual, ctx.batch_stats = p, seed, residual is not None, mean_in is None
        ctx.mark_non_differentiable(mean, invstd, var)
        ctx.save_for_backward(x, weight, out, mean, invstd)   # out: ReLU's mask; dropout's is recomputed

    @first_order("skelfast::batch_norm_relu")
    def _backward(ctx, grad_out, _gmean, _ginvstd, _gvar):
        x, weight, out, mean, invstd = ctx.saved_tensors
        need_res = ctx.has_residual and ctx.needs_input_grad[5]
        gx, gw, gb, gres = torch.ops.skelfast.batch_norm_relu_backward(
            _grad_layout(grad_out, out), out, x, weight, mean, invstd, ctx.batch_stats, ctx.p, ctx.seed, need_res)
        return (gx, gw if ctx.needs_input_grad[1] else None, gb if ctx.needs_input_grad[2] else None, None, None,
                gres if need_res else None, None, None, None)

    torch.library.register_autograd("skelfast::batch_norm_relu", _backward, setup_context=_setup_context)


def _triton_forward(x, weight, bias, mean, var, residual, eps, p, seed):
    from ..triton.epilogue import batch_norm_relu_forward
    return batch_norm_relu_forward(x, weight, bias, mean, var, residual, eps, p, seed)


def _triton_backward(grad_out, out, x, weight, mean, invstd, batch_stats, p, seed, residual_grad):
    from ..triton.epilogue import batch_norm_relu_backward
    return batch_norm_relu_backward(grad_out, out, x, weight, mean, invstd, batch_stats, p, seed, residual_grad)


_HAS_KERNEL = _extension.has_cpu_kernels() and hasattr(torch.ops.skelfast, "batch_norm_relu")
if _HAS_KERNEL:
    _register()
    _backend.register_triton_for_cuda({"batch_norm_relu": _triton_forward,
                                       "batch_norm_relu_backward": _triton_backward})
    _backend.register_triton_kernel("batch_norm_relu", _triton_forward)
    _backend.register_triton_kernel("batch_norm_relu_backward", _triton_backward)
