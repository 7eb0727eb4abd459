"""Triton kernels of the ST-GCN block epilogues: skelfast::dropout_add_relu and
skelfast::batch_norm_relu (method.md §4.2), forward and backward.

Same contract as the CPU kernels (csrc/cpu/epilogue_cpu.cpp, csrc/cpu/batch_norm_relu_cpu.cpp):
x is contiguous or channels-last and element i of a call keeps or drops by the counter-based hash
of (seed, i) (csrc/include/skelfast/dropout_math.h), i the element's offset in memory. So one seed
and one layout give the same mask on every device, and the tests compare these kernels with the
C++ ones exactly. The hash runs in int64 arithmetic reduced mod 2^32 (the low 32 bits of a
wrapped int64 product are exact), which keeps it clear of Triton's unsigned-integer promotion rules.

Memory order as (O, C, S): a contiguous (B, C, ...) tensor is O = B, S = the product of the
trailing dims; a channels-last 4-d one is O = B*H*W, S = 1. Offset i has channel (i // S) % C.
BatchNorm statistics: per channel, sums of (x - shift) and (x - shift)^2 with shift = the
channel's first value (no cancellation in the one-pass variance, as on CPU), accumulated in fp32
(fp64 for fp64 x) over a fixed split of the rows, the splits added in fp64 by torch: the result
does not depend on scheduling. bf16/fp16 x is read and written in its dtype and computed in fp32,
with fp32 affine parameters and statistics (the autocast path).

Import only with triton installed; under TRITON_INTERPRET=1 (set before this import) it also runs
on CPU tensors (tests). Attached to the CUDA key by skelfast.ops.epilogue / batch_norm_relu.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..ops._layout import memory_format
from ..ops.batch_norm_relu import param_dtype

__all__ = ["dropout_add_relu_forward", "dropout_add_relu_backward", "batch_norm_relu_forward",
           "batch_norm_relu_backward", "dropout_key"]

_BLOCK = 1024          # elements per program of the element-wise kernels
_MAX_SPLITS = 128      # row splits of the per-channel reductions (partials: (splits, 2, C))
_WIDE_FROM = 2**31     # element counts from which the channel index is computed in int64 (tests lower it)


# ------------------------------------------------------------------------------------------------
# The counter-based mask (dropout_math.h: hash32 "lowbias32", two rounds over the 64-bit offset)
# ------------------------------------------------------------------------------------------------
@triton.jit
def _low32(x):
    """x mod 2^32 for int64 x (any sign: the shift is arithmetic, floor(x / 2^32)). Written without
    a 0xFFFFFFFF literal, which Triton types as uint32: the result must not depend on how that
    widens to int64."""
    return x - ((x >> 32) << 32)


@triton.jit
def _hash32(x):
    """lowbias32 on int64 values in [0, 2^32); products wrap in int64, their low 32 bits are exact."""
    x = x ^ (x >> 16)
    x = _low32(x * 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _low32(x * 0x846CA68B)
    return x ^ (x >> 16)


@triton.jit
def _dropout_weight(i, key0, key1, threshold, keep_hi, keep_lo, ACC: tl.constexpr):
    """The kept scale 1/(1-p) where hash(seed, i) >= threshold, else 0; i int64 offsets >= 0. The
    scale comes as two fp32 halves (float arguments are fp32): hi + lo is within 2^-48 of the double."""
    key0 = _low32(key0.to(tl.int64))   # passed as signed int32 (dropout_key): back to [0, 2^32)
    key1 = _low32(key1.to(tl.int64))
    threshold = _low32(threshold.to(tl.int64))
    h = _hash32(_low32(i) ^ key0)
    h = _hash32(_low32(h + (key1 ^ _low32((i >> 32) * 0x9E3779B9))))
    return tl.where(h >= threshold, tl.cast(keep_hi, ACC) + tl.cast(keep_lo, ACC), 0.0)


def _as_int32(v: int) -> int:
    """A 32-bit pattern in [0, 2^32) as the signed int32 with the same bits."""
    return v - (1 << 32) if v >= (1 << 31) else v


# Triton types an int argument by its value (i32 below 2^31, i64 above) and specialises on it
# (divisible by 16, equal to 1): fresh random keys every step would compile a new variant of each
# kernel for each combination, about a second each, for the first hundreds of steps. The keys and
# the threshold therefore travel as signed int32 bit patterns and are not specialised on.
_NO_KEY_SPECIALISATION = dict(do_not_specialize=["key0", "key1", "threshold"])


def dropout_key(p: float, seed: int) -> Tuple[bool, tuple]:
    """(active, kernel arguments key0, key1, threshold, keep_hi, keep_lo) of dropout_math.h's
    dropout_params(): p = 1 drops everything (threshold 2^32 - 1 with a zero scale). key0, key1
    and threshold are 32-bit patterns passed as signed int32 (_dropout_weight reads them back)."""
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    key0, key1 = _as_int32(s & 0xFFFFFFFF), _as_int32(s >> 32)
    if p <= 0.0:
        return False, (key0, key1, 0, 1.0, 0.0)
    t = p * 4294967296.0
    threshold = 0xFFFFFFFF if p >= 1.0 or t >= 4294967295.0 else int(t)
    keep = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
    hi = float(torch.tensor(keep, dtype=torch.float32))
    return True, (key0, key1, _as_int32(threshold), hi, keep - hi)


def _acc_dtype(t: torch.Tensor):
    return tl.float64 if t.dtype == torch.float64 else tl.float32


def _torch_acc(t: torch.Tensor) -> torch.dtype:
    """_acc_dtype as a torch dtype (partial sums, the per-channel factors the kernels read)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _layout(t: torch.Tensor) -> torch.memory_format:
    """t's memory format by the ops' rule (skelfast/ops/_layout.py); raises unless t is dense in
    it: other layouts have no memory offsets the kernels (and the mask) are defined on."""
    fmt = memory_format(t)
    if not t.is_contiguous(memory_format=fmt):
        raise RuntimeError("the epilogue kernels need contiguous or channels-last (4-d) tensors")
    return fmt


def _geometry(t: torch.Tensor) -> Tuple[int, int, int, torch.memory_format]:
    """(O, C, S) of the module docstring and t's memory format."""
    if t.dim() < 2:
        raise RuntimeError(f"the epilogue kernels need (B, C, ...) tensors, got shape {tuple(t.shape)}")
    fmt = _layout(t)
    if fmt is torch.channels_last:
        B, C, H, W = t.shape
        return B * H * W, C, 1, fmt
    C = t.shape[1]
    return t.shape[0], C, (t.numel() // (t.shape[0] * C) if t.numel() else 0), fmt


def _check_p(p: float, op: str) -> None:
    if not 0.0 <= p <= 1.0:
        raise RuntimeError(f"{op}: p must be in [0, 1], got {p}")


# ------------------------------------------------------------------------------------------------
# dropout_add_relu: out = relu(dropout(x) + residual)
# ------------------------------------------------------------------------------------------------
@triton.jit
def _drop_add_relu_store(y, i, m, res_ptr, out_ptr, key0, key1, threshold, keep_hi, keep_lo,
                         HAS_RES: tl.constexpr, DROP: tl.constexpr, ACC: tl.constexpr):
    """out[i] = relu(dropout(y) + residual[i]): the forward tail of both ops."""
    if DROP:
        y = y * _dropout_weight(i, key0, key1, threshold, keep_hi, keep_lo, ACC)
    if HAS_RES:
        y = y + tl.load(res_ptr + i, mask=m, other=0.0).to(ACC)
    tl.store(out_ptr + i, tl.where(y > 0, y, 0.0).to(out_ptr.dtype.element_ty), mask=m)


@triton.jit(**_NO_KEY_SPECIALISATION)
def _epilogue_fwd_kernel(x_ptr, res_ptr, out_ptr, n, key0, key1, threshold, keep_hi, keep_lo,
                         HAS_RES: tl.constexpr, DROP: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    _drop_add_relu_store(tl.load(x_ptr + i, mask=m, other=0.0).to(ACC), i, m, res_ptr, out_ptr, key0, key1,
                         threshold, keep_hi, keep_lo, HAS_RES, DROP, ACC)


@triton.jit(**_NO_KEY_SPECIALISATION)
def _epilogue_bwd_kernel(g_ptr, out_ptr, gx_ptr, gres_ptr, n, key0, key1, threshold, keep_hi, keep_lo,
                         RES_GRAD: tl.constexpr, DROP: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    o = tl.load(out_ptr + i, mask=m, other=0.0)
    gz = tl.where(o > 0, tl.load(g_ptr + i, mask=m, other=0.0).to(ACC), 0.0)   # ReLU'(0) = 0
    if RES_GRAD:
        tl.store(gres_ptr + i, gz.to(gres_ptr.dtype.element_ty), mask=m)
    if DROP:
        gz = gz * _dropout_weight(i, key0, key1, threshold, keep_hi, keep_lo, ACC)
    tl.store(gx_ptr + i, gz.to(gx_ptr.dtype.element_ty), mask=m)


def _elementwise_grid(n: int):
    return (triton.cdiv(n, _BLOCK),)


def dropout_add_relu_forward(x: torch.Tensor, residual: Optional[torch.Tensor], p: float, seed: int) -> torch.Tensor:
    """Triton skelfast::dropout_add_relu: x contiguous or channels-last, residual x's layout."""
    _check_p(p, "skelfast::dropout_add_relu")
    fmt = _layout(x)
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype
                                 or not residual.is_contiguous(memory_format=fmt)):
        raise RuntimeError("skelfast::dropout_add_relu: residual must have x's shape, dtype and strides")
    out = torch.empty_like(x)
    n = x.numel()
    if n == 0:
        return out
    drop, key = dropout_key(p, seed)
    _epilogue_fwd_kernel[_elementwise_grid(n)](x, residual if residual is not None else x, out, n, *key,
                                               HAS_RES=residual is not None, DROP=drop, BLOCK=_BLOCK,
                                               ACC=_acc_dtype(x))
    return out


def dropout_add_relu_backward(grad_out: torch.Tensor, out: torch.Tensor, p: float, seed: int,
                              residual_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Triton skelfast::dropout_add_relu_backward -> (grad_x, grad_residual or an empty (0,))."""
    _check_p(p, "skelfast::dropout_add_relu_backward")
    fmt = _layout(out)
    g = grad_out.to(out.dtype).contiguous(memory_format=fmt)
    gx = torch.empty_like(out)
    gres = torch.empty_like(out) if residual_grad else out.new_empty((0,))
    n = out.numel()
    if n == 0:
        return gx, gres
    drop, key = dropout_key(p, seed)
    _epilogue_bwd_kernel[_elementwise_grid(n)](g, out, gx, gres if residual_grad else gx, n, *key,
                                               RES_GRAD=residual_grad, DROP=drop, BLOCK=_BLOCK, ACC=_acc_dtype(out))
    return gx, gres


# ------------------------------------------------------------------------------------------------
# batch_norm_relu: out = relu(dropout(x * scale[c] + shift[c]) + residual)
# ------------------------------------------------------------------------------------------------
@triton.jit
def _tile_offsets(l, c, C, S):
    """Memory offsets of the (rows l, channels c) tile of an (O, C, S) tensor, row l = o * S + s."""
    o = l // S
    s = l - o * S
    return (o * C * S + s)[:, None] + (c.to(tl.int64) * S)[None, :]


@triton.jit(**_NO_KEY_SPECIALISATION)
def _channel_sums_kernel(x_ptr, center_ptr, g_ptr, out_ptr, gres_ptr, part_ptr, L, C, S, per_split,
                         key0, key1, threshold, keep_hi, keep_lo, BACKWARD: tl.constexpr, RES_GRAD: tl.constexpr,
                         DROP: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, ACC: tl.constexpr):
    """part[split, 0, c] = sum a, part[split, 1, c] = sum a (x - center[c]) over the rows
    [split * per_split, (split + 1) * per_split) of channel block c, where
      forward  (center = each channel's first value): a = x - center, the shifted moments;
      backward (center = mean): a = gz, the gradient at BN's output (grad_out [out > 0] times the
               dropout multiplier), and grad_residual = the ReLU gradient when RES_GRAD."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(1)
    cm = c < C
    center = tl.load(center_ptr + c, mask=cm, other=0.0).to(ACC)
    s1 = tl.zeros([BLOCK_C], dtype=ACC)
    s2 = tl.zeros([BLOCK_C], dtype=ACC)
    start = split.to(tl.int64) * per_split
    for l0 in range(0, per_split, BLOCK_L):
        l = start + l0 + tl.arange(0, BLOCK_L)
        m = (l < L)[:, None] & cm[None, :]
        off = _tile_offsets(l, c, C, S)
        xc = tl.where(m, tl.load(x_ptr + off, mask=m, other=0.0).to(ACC) - center[None, :], 0.0)
        if BACKWARD:
            o = tl.load(out_ptr + off, mask=m, other=0.0)
            a = tl.where(o > 0, tl.load(g_ptr + off, mask=m, other=0.0).to(ACC), 0.0)
            if RES_GRAD:
                tl.store(gres_ptr + off, a.to(gres_ptr.dtype.element_ty), mask=m)
            if DROP:
                a = a * _dropout_weight(off, key0, key1, threshold, keep_hi, keep_lo, ACC)
        else:
            a = xc
        s1 += tl.sum(a, axis=0)
        s2 += tl.sum(a * xc, axis=0)
    tl.store(part_ptr + split * 2 * C + c, s1, mask=cm)
    tl.store(part_ptr + split * 2 * C + C + c, s2, mask=cm)


@triton.jit
def _channel(i, C, S, WIDE: tl.constexpr):
    """Channel (i // S) % C of memory offsets i; in int32 unless the tensor has 2^31 elements or
    more (64-bit division costs several times the 32-bit one on GPUs)."""
    if WIDE:
        return (i // S) % C
    else:
        return (i.to(tl.int32) // S) % C


@triton.jit(**_NO_KEY_SPECIALISATION)
def _bn_apply_kernel(x_ptr, res_ptr, out_ptr, scale_ptr, shift_ptr, n, C, S, key0, key1, threshold, keep_hi,
                     keep_lo, HAS_RES: tl.constexpr, DROP: tl.constexpr, BLOCK: tl.constexpr, ACC: tl.constexpr,
                     WIDE: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    c = _channel(i, C, S, WIDE)
    y = (tl.load(x_ptr + i, mask=m, other=0.0).to(ACC) * tl.load(scale_ptr + c, mask=m, other=0.0)
         + tl.load(shift_ptr + c, mask=m, other=0.0))
    _drop_add_relu_store(y, i, m, res_ptr, out_ptr, key0, key1, threshold, keep_hi, keep_lo, HAS_RES, DROP, ACC)


@triton.jit(**_NO_KEY_SPECIALISATION)
def _bn_grad_x_kernel(g_ptr, out_ptr, x_ptr, mean_ptr, ka_ptr, kb_ptr, kc_ptr, gx_ptr, n, C, S,
                      key0, key1, threshold, keep_hi, keep_lo, DROP: tl.constexpr, BLOCK: tl.constexpr,
                      ACC: tl.constexpr, WIDE: tl.constexpr):
    """Backward pass 2: grad_x = ka[c] gz + kb[c] + kc[c] (x - mean[c])."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    c = _channel(i, C, S, WIDE)
    o = tl.load(out_ptr + i, mask=m, other=0.0)
    gz = tl.where(o > 0, tl.load(g_ptr + i, mask=m, other=0.0).to(ACC), 0.0)
    if DROP:
        gz = gz * _dropout_weight(i, key0, key1, threshold, keep_hi, keep_lo, ACC)
    xc = tl.load(x_ptr + i, mask=m, other=0.0).to(ACC) - tl.load(mean_ptr + c, mask=m, other=0.0).to(ACC)
    gx = (tl.load(ka_ptr + c, mask=m, other=0.0) * gz + tl.load(kb_ptr + c, mask=m, other=0.0)
          + tl.load(kc_ptr + c, mask=m, other=0.0) * xc)
    tl.store(gx_ptr + i, gx.to(gx_ptr.dtype.element_ty), mask=m)


def _reduction_launch(L: int, C: int, S: int):
    """(grid, per_split, BLOCK_L, BLOCK_C) of the per-channel reductions: wide channel tiles when
    channels are innermost (channels-last: coalesced along C), tall row tiles otherwise."""
    block_c = min(64, triton.next_power_of_2(C)) if S == 1 else min(8, triton.next_power_of_2(C))
    block_l = 64 if S == 1 else 256
    splits = max(1, min(_MAX_SPLITS, triton.cdiv(L, block_l)))
    per_split = triton.cdiv(triton.cdiv(L, splits), block_l) * block_l
    splits = triton.cdiv(L, per_split)
    return (triton.cdiv(C, block_c), splits), per_split, block_l, block_c


def _channel_sums(x: torch.Tensor, center: torch.Tensor, L: int, C: int, S: int, grad: Optional[torch.Tensor] = None,
                  out: Optional[torch.Tensor] = None, gres: Optional[torch.Tensor] = None, p: float = 0.0,
                  seed: int = 0) -> torch.Tensor:
    """(2, C) float64 totals of _channel_sums_kernel over all rows: the forward moments about
    `center` when grad is None, else the backward sums (grad_residual written into gres if given)."""
    backward = grad is not None
    drop, key = dropout_key(p if backward else 0.0, seed)
    grid, per_split, block_l, block_c = _reduction_launch(L, C, S)
    part = torch.empty((grid[1], 2, C), dtype=_torch_acc(x), device=x.device)
    _channel_sums_kernel[grid](x, center, grad if backward else x, out if backward else x,
                               gres if gres is not None else x, part, L, C, S, per_split, *key, BACKWARD=backward,
                               RES_GRAD=gres is not None, DROP=drop, BLOCK_L=block_l, BLOCK_C=block_c,
                               ACC=_acc_dtype(x))
    return part.double().sum(0)


def _check_vector(v: torch.Tensor, x: torch.Tensor, dtype: torch.dtype, name: str, op: str) -> None:
    C = x.shape[1]
    if v.dim() != 1 or v.shape[0] != C or v.dtype != dtype or not v.is_contiguous() or v.device != x.device:
        raise RuntimeError(f"{op}: {name} must be a contiguous ({C},) {dtype} tensor on {x.device}")


def batch_norm_relu_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: Optional[torch.Tensor],
                            var: Optional[torch.Tensor], residual: Optional[torch.Tensor], eps: float, p: float,
                            seed: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton skelfast::batch_norm_relu (schema in csrc/batch_norm_relu.cpp): mean/var both None =
    batch statistics. Returns (out, mean, invstd, var), the statistics in the parameters' dtype."""
    op = "skelfast::batch_norm_relu"
    _check_p(p, op)
    if not (eps >= 0.0):
        raise RuntimeError(f"{op}: eps must be >= 0, got {eps}")
    O, C, S, fmt = _geometry(x)
    pdt = param_dtype(x)
    _check_vector(weight, x, pdt, "weight", op)
    _check_vector(bias, x, pdt, "bias", op)
    if (mean is None) != (var is None):
        raise RuntimeError(f"{op}: mean and var must be given together")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype
                                 or not residual.is_contiguous(memory_format=fmt)):
        raise RuntimeError(f"{op}: residual must have x's shape, dtype and strides")
    L = O * S
    if mean is None:
        if L == 0:
            raise RuntimeError(f"{op}: batch statistics need at least one value per channel")
        flat = x.as_strided((x.numel(),), (1,))                  # memory order (x is dense)
        ref = flat[torch.arange(C, device=x.device) * S]           # each channel's first value
        s = _channel_sums(x, ref, L, C, S)
        m1 = s[0] / L
        mean_d = ref.double() + m1
        var_d = (s[1] / L - m1 * m1).clamp_min(0.0)
    else:
        _check_vector(mean, x, pdt, "mean", op)
        _check_vector(var, x, pdt, "var", op)
        mean_d, var_d = mean.double(), var.double()
    invstd_d = (var_d + eps).rsqrt()
    scale_d = weight.double() * invstd_d
    shift_d = bias.double() - mean_d * scale_d
    out = torch.empty_like(x)
    n = x.numel()
    if n:
        acc = _torch_acc(x)
        drop, key = dropout_key(p, seed)
        _bn_apply_kernel[_elementwise_grid(n)](x, residual if residual is not None else x, out, scale_d.to(acc),
                                               shift_d.to(acc), n, C, S, *key, HAS_RES=residual is not None, DROP=drop,
                                               BLOCK=_BLOCK, ACC=_acc_dtype(x), WIDE=n >= _WIDE_FROM)
    return out, mean_d.to(pdt), invstd_d.to(pdt), var_d.to(pdt)


def batch_norm_relu_backward(grad_out: torch.Tensor, out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                             mean: torch.Tensor, invstd: torch.Tensor, batch_stats: bool, p: float, seed: int,
                             residual_grad: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton skelfast::batch_norm_relu_backward -> (grad_x, grad_weight, grad_bias, grad_residual
    or an empty (0,)); gz = grad_out [out > 0] * dropout multiplier is the gradient at BN's output:
    grad_bias = sum gz, grad_weight = invstd sum gz (x - mean),
    grad_x = w invstd (gz - [batch] (sum gz / M + (x - mean) invstd^2 sum gz (x - mean) / M))."""
    op = "skelfast::batch_norm_relu_backward"
    _check_p(p, op)
    O, C, S, fmt = _geometry(out)
    if x.shape != out.shape or x.dtype != out.dtype or not x.is_contiguous(memory_format=fmt):
        raise RuntimeError(f"{op}: x must have out's dtype, shape and strides")
    if grad_out.shape != out.shape:
        raise RuntimeError(f"{op}: grad_out must have out's shape")
    pdt = param_dtype(out)
    for v, name in ((weight, "weight"), (mean, "mean"), (invstd, "invstd")):
        _check_vector(v, out, pdt, name, op)
    g = grad_out.to(out.dtype).contiguous(memory_format=fmt)
    gx = torch.empty_like(out)
    gres = torch.empty_like(out) if residual_grad else out.new_empty((0,))
    L, n = O * S, out.numel()
    if n == 0:
        zeros = weight.new_zeros((C,))
        return gx, zeros, zeros.clone(), gres
    s = _channel_sums(x, mean, L, C, S, g, out, gres if residual_grad else None, p, seed)
    acc = _torch_acc(out)
    drop, key = dropout_key(p, seed)
    w, istd = weight.double(), invstd.double()
    ka = w * istd
    kb = -ka * s[0] / L if batch_stats else torch.zeros_like(ka)
    kc = -ka * istd * istd * s[1] / L if batch_stats else torch.zeros_like(ka)
    _bn_grad_x_kernel[_elementwise_grid(n)](g, out, x, mean, ka.to(acc), kb.to(acc), kc.to(acc), gx, n, C, S,
                                            *key, DROP=drop, BLOCK=_BLOCK, ACC=_acc_dtype(out),
                                            WIDE=n >= _WIDE_FROM)
    return gx, (s[1] * istd).to(pdt), s[0].to(pdt), gres
