"""Benchmark B8: the ST-GCN block's BatchNorm + ReLU pairs (method.md §4.2), forward + backward.

Cases, per stage of the batched encoders (G=6 at N=64, M=2: 128 sequences; V=25; the blocks of
skelfast.reference.stgcn.block_specs: 6*16 channels at T=50, 6*32 at T=25, 6*64 at T=13 and the
last block's 6*256 at T=13), in the layout the batched encoder runs there (channels-last on CPU,
contiguous NCHW on GPU), training mode:
  bn_relu          ReLU(BN(x))                               (the block's first pair)
  bn_drop_add_relu ReLU(dropout(BN(x), 0.5) + residual)      (the second pair, with the residual)
Providers (gradients to x, weight, bias and the residual; running statistics updated):
  reference          F.batch_norm, F.dropout, add and F.relu, eager
  reference+compile  the same forward under torch.compile (its backward through AOT autograd)
  skelfast           skelfast.ops.batch_norm_relu (C++ on CPU, Triton on CUDA)
  skelfast-bf16      (GPU) the same with bf16 activations and fp32 parameters (the autocast path)
Checks before timing: without dropout every provider's output and gradients against the eager
reference; with dropout (the providers draw different masks) skelfast against F.batch_norm
followed by skelfast.ops.dropout_add_relu with the same seed (the same counter-based mask); the
compiled reference with dropout draws from its own stream and is checked only without it.

Floor: the minimal traffic of one fused pass each way, `bytes_moved` = forward reads x (and the
residual) and writes out, backward reads grad_out, out and x and writes grad_x (and grad_residual)
at the copy bandwidth measured in the same run; the statistics pass over x and the backward's
reduction pass are above this floor (a two-pass kernel reaches at most ~60-70% of it).

Usage: python -m benchmarks.bench_epilogue [--quick] [--device cuda] [--out-dir DIR]
"""
from __future__ import annotations

import sys
from typing import Callable, Dict

import torch
import torch.nn.functional as F

from skelfast import ops

from . import _harness as H

G, N_SEQ, V = 6, 128, 25
STAGES = ((16, 50), (32, 25), (64, 13), (256, 13))     # (channels per encoder, T) of block_specs(3, 16, 256)
P_DROP = 0.5
EPS, MOMENTUM = 1e-5, 0.1


def reference_forward(x, running_mean, running_var, weight, bias, residual, p):
    y = F.batch_norm(x, running_mean, running_var, weight, bias, True, MOMENTUM, EPS)
    if p > 0:
        y = F.dropout(y, p, True)
    if residual is not None:
        y = y + residual
    return F.relu(y)


def skelfast_forward(x, running_mean, running_var, weight, bias, residual, p, generator=None):
    return ops.batch_norm_relu(x, running_mean, running_var, weight, bias, True, MOMENTUM, EPS, residual, p,
                               generator=generator)


def make_case(shape, device, memory_format, act_dtype, with_residual, seed=0):
    """Leaves (x, weight, bias, residual), running statistics and the upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    C = shape[1]

    def act():
        return torch.randn(shape, generator=g).to(device=device, dtype=act_dtype).contiguous(
            memory_format=memory_format)

    x = act().requires_grad_()
    residual = act().requires_grad_() if with_residual else None
    weight = (1 + 0.1 * torch.randn(C, generator=g)).to(device).requires_grad_()
    bias = (0.1 * torch.randn(C, generator=g)).to(device).requires_grad_()
    stats = (torch.zeros(C, device=device), torch.ones(C, device=device))
    return x, weight, bias, residual, stats, act()


def fwd_bwd(forward: Callable, leaves, stats, grad_out, p):
    x, weight, bias, residual = leaves

    def call():
        out = forward(x, *stats, weight, bias, residual, p)
        inputs = [t for t in leaves if t is not None]
        return (out.detach(),) + torch.autograd.grad(out, inputs, grad_out)
    return call


def check(name, got, want, low_precision: bool):
    """got / want: (out, gradients...). fp32 outputs element-wise; gradients by relative L2 error:
    an element whose BN output rounds to the other side of ReLU's 0 in one provider has an O(1)
    gradient difference. Measured at (128, 384, 50, 25) against an fp64 run with the same mask:
    eager F.batch_norm (fp32 statistics) out 5e-6, gradients 0.9-1.4e-3 (ReLU flips); the fused op
    out 4e-8, gradients 3-5e-8."""
    if low_precision:
        H.check_rel_l2(name, got, want, 2e-2)
    else:
        H.check_close(name, got[0], want[0], atol=1e-4, rtol=1e-4)
        H.check_rel_l2(name, got[1:], want[1:], 5e-3)


def check_dropout_case(leaves, stats, grad_out):
    """skelfast with dropout vs F.batch_norm + dropout_add_relu drawing the same mask (same seed)."""
    x, weight, bias, residual = leaves
    inputs = [t for t in leaves if t is not None]
    fused = skelfast_forward(x, *[s.clone() for s in stats], weight, bias, residual, P_DROP,
                             generator=torch.Generator().manual_seed(1))
    y = F.batch_norm(x, *[s.clone() for s in stats], weight, bias, True, MOMENTUM, EPS)
    plain = ops.dropout_add_relu(y, residual, P_DROP, True, generator=torch.Generator().manual_seed(1))
    got = (fused.detach(),) + torch.autograd.grad(fused, inputs, grad_out)
    want = (plain.detach(),) + torch.autograd.grad(plain, inputs, grad_out)
    check("skelfast (dropout mask)", got, want, x.dtype != torch.float32)


def bench_case(shape, mode, device, memory_format, quick, bf16):
    with_residual = mode == "bn_drop_add_relu"
    p = P_DROP if with_residual else 0.0
    cases = {"float32": make_case(shape, device, memory_format, torch.float32, with_residual)}
    if bf16:
        cases["bfloat16"] = make_case(shape, device, memory_format, torch.bfloat16, with_residual)
    H.fresh_compile_cache()
    compiled = H.compile_static(reference_forward)
    providers: Dict[str, Callable] = {}
    for dtype_name, (x, w, b, r, stats, go) in cases.items():
        leaves = (x, w, b, r)
        low = dtype_name != "float32"
        new = {}
        if not low:
            new["reference"] = fwd_bwd(reference_forward, leaves, stats, go, p)
            new["reference+compile"] = fwd_bwd(compiled, leaves, stats, go, p)
        new["skelfast-bf16" if low else "skelfast"] = fwd_bwd(skelfast_forward, leaves, stats, go, p)
        if p == 0:   # bf16: against the eager reference on the same bf16 leaves
            want = fwd_bwd(reference_forward, leaves, stats, go, p)()
            for name, call in new.items():
                if name != "reference":
                    check(name, call(), want, low)
        else:
            check_dropout_case(leaves, stats, go)
        providers.update(new)
    kw = dict(min_reps=5, min_time_s=0.2) if quick else dict(min_reps=10, min_time_s=1.0)
    stats_by_name = H.measure_interleaved(providers, device, **kw)
    numel = 1
    for s in shape:
        numel *= s
    rows = []
    for name, st in stats_by_name.items():
        elem = 2 if "bf16" in name else 4
        bytes_moved = (6 + 2 * with_residual) * numel * elem
        rows.append(H.timed_row("epilogue", device, name, mode, "N*M={},C={},T={},V={},{}".format(
            *shape, "channels_last" if memory_format is torch.channels_last else "contiguous"),
            "bfloat16" if "bf16" in name else "float32", st, H.peak_memory_mb(providers[name], device),
            reference_ms=stats_by_name["reference"].p50, compile_ms=stats_by_name["reference+compile"].p50,
            bytes_moved=bytes_moved))
    return rows


def main(argv=None):
    parser = H.bench_parser(__doc__, "one small shape (8 sequences, 6*8 channels)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    memory_format = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    shapes = [(8, G * 8, 10, V)] if args.quick else [(N_SEQ, G * c, t, V) for c, t in STAGES]
    print(H.ceilings_line(device))
    rows = []
    for shape in shapes:
        for mode in ("bn_relu", "bn_drop_add_relu"):
            rows += bench_case(shape, mode, device, memory_format, args.quick, bf16=device.type == "cuda")
            for r in rows[-(4 if device.type == "cuda" else 3):]:
                print(f"  {r['mode']:17s} {r['provider']:18s} {r['shape']:44s}: {r['p50_ms']:9.2f} ms  "
                      f"x{r['speedup_vs_reference']:.2f} vs eager  x{r['speedup_vs_compile']:.2f} vs compile  "
                      f"{r['gbs']:.1f} GB/s  peak {r['peak_mem_mb']} MiB", flush=True)
    H.print_table(rows, ["op", "provider", "mode", "shape", "p50_ms", "speedup_vs_reference", "speedup_vs_compile",
                         "gbs", "pct_of_floor", "peak_mem_mb"])
    print(f"wrote {H.write_rows(rows, 'epilogue', device, args.out_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
