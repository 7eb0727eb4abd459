"""Benchmark B5: G ST-GCN encoders (method.md §4.2), sequential reference vs batched skelfast.

Providers (each checked against the eager reference before it is timed):
  reference          G sequential skelfast.reference.STGCN encoders, eager fp32
  reference+compile  the same G-encoder loop under torch.compile (one graph)
  skelfast           skelfast.nn.BatchedSTGCN, fp32 (grouped convs + skelfast.ops.graph_conv)
  skelfast+compile   the batched encoder under torch.compile (fuses BN/ReLU/add passes)
  skelfast-bf16      the same under bf16 autocast (GPU by default; --bf16-cpu adds it on CPU)
Modes: forward (train mode, no_grad: the key-encoder / teacher pass) and forward+backward (the
query-encoder pass). Dropout is 0 so outputs are comparable (fp32: allclose 1e-3; bf16: relative
L2 error < 5e-2).

Columns of every row (benchmarks/_harness.py timed_row): median/p20/p80 ms; speedup_vs_reference
(over `reference`) and speedup_vs_compile (over `reference+compile`); throughput = samples/s
(G*N encoder samples per second); tflops = achieved TFLOP/s at the nominal model FLOPs
(performance.md §4 counting: dense einsum, 157 GFLOP per encoder forward at N*M=256, T=50;
forward+backward = 3x); floor_us = compute floor = nominal FLOPs / the GEMM rate measured in this
run for the row's compute dtype (fp32 rows: fp32 GEMM, TF32 where torch's matmul settings allow;
bf16-autocast rows: bf16 GEMM), floor_bound "compute"; pct_of_floor = floor / median time; peak
memory.

--last-block adds block 10 alone (64 -> 256, T=13: 72% of the FLOPs), forward, with the same
providers and columns (the bf16 row is skelfast-bf16; speed-ups are over the fp32 reference as in
the encoder rows). Its bf16 row also has pct_of_datasheet_peak = achieved TFLOP/s / the dense BF16
datasheet peak (989.4 TFLOP/s, performance.md §2) on H100/H200, empty on other devices: the
measured-GEMM floor says how close the block is to what this machine's matmul achieves, the
datasheet figure how close to the hardware (target >= 40%).

--quick (N=4): reference and skelfast only. The compile providers are left out because compiling
the six-encoder graphs on CPU takes minutes with a cold inductor cache (about 5 min for the four
compiles on the 2-core CPU box, about 30 s warm), which alone would exceed the quick suite's
3-minute budget; quick rows therefore have no speedup_vs_compile. --providers overrides the list
(e.g. --quick --providers reference,reference+compile,skelfast,skelfast+compile).

Usage: python -m benchmarks.bench_encoder [--quick] [--device cpu|cuda] [--sizes 64,128]
       [--models 6] [--threads N] [--modes forward,forward+backward] [--providers ...] [--last-block]
       [--bf16-cpu]
"""
from __future__ import annotations

import sys
from typing import Callable, Dict, Optional

import torch

import skelfast
from skelfast.nn import BatchedSTGCN
from skelfast.reference.stgcn import STGCN, TEMPORAL_KERNEL, block_specs

from . import _harness as H

T, V, M, K = 50, 25, 2, 3


def encoder_forward_flops(n_seq: int, in_channels=3, hidden_channels=16, hidden_dim=256, head_dims=(256, 256, 128)):
    """Nominal FLOPs of one encoder forward over n_seq = N*M sequences (performance.md §4)."""
    t, macs = T, 0
    for cin, cout, stride, res, _ in block_specs(in_channels, hidden_channels, hidden_dim, 0.0):
        t_out = (t - 1) // stride + 1
        macs += cin * K * cout * t * V          # gcn 1x1 conv
        macs += K * cout * V * V * t            # einsum with A*E (dense)
        macs += cout * cout * TEMPORAL_KERNEL * t_out * V  # 9x1 temporal conv
        if res == "conv" or (res == "auto" and not (cin == cout and stride == 1)):
            macs += cin * cout * t_out * V
        t = t_out
    head = sum(a * b for a, b in zip(head_dims[:-1], head_dims[1:]))
    return 2 * macs * n_seq + 2 * head * n_seq // M


# Dense BF16 tensor-core peaks (performance.md §2 datasheet): pct_of_datasheet_peak of the last block.
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4}
ALL_PROVIDERS = ("reference", "reference+compile", "skelfast", "skelfast+compile", "skelfast-bf16")
QUICK_PROVIDERS = ("reference", "skelfast", "skelfast-bf16")
MODES = ("forward", "forward+backward")   # no compile in --quick (module docstring)


def last_block_flops(n_seq: int, G: int) -> float:
    """FLOPs of block 10 (64 -> 256, T=13) forward for G encoders: 1x1 + dense einsum + 9x1 + residual."""
    t, cin, cout = 13, 64, 256
    macs = cin * K * cout * t * V + K * cout * V * V * t + cout * cout * TEMPORAL_KERNEL * t * V + cin * cout * t * V
    return 2.0 * macs * n_seq * G


def make_models(G: int, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    refs = [STGCN(dropout=0.0).to(device) for _ in range(G)]
    with torch.no_grad():
        for r in refs:  # non-trivial edge importance, so the E path is exercised
            for p in r.edge_importance:
                p.add_(0.1 * torch.randn_like(p))
    batched = BatchedSTGCN.from_reference(refs)
    return refs, batched


def with_providers(names, reference: Callable, batched: Callable, device: torch.device) -> Dict[str, Callable]:
    """The selected providers of one case from its sequential reference and batched callables
    (both return a tuple of tensors); compiled ones are built here, so unselected ones cost nothing."""
    def lowp(*args):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return tuple(o.float() for o in batched(*args))

    makers = {"reference": lambda: reference, "reference+compile": lambda: H.compile_static(reference),
              "skelfast": lambda: batched, "skelfast+compile": lambda: H.compile_static(batched),
              "skelfast-bf16": lambda: lowp}
    return {name: makers[name]() for name in names}


GRAD_TOL = 5e-2   # fp32 fwd+bwd noise up to 8.0e-3 measured at N=4 (BN backward amplifies summation order); a
#                   broken backward is off by O(1)


def check_provider(name: str, got, want) -> None:
    """got/want: (head, pooled) outputs, then (fwd+bwd, fp32) every parameter gradient.
    fp32: outputs element-wise 1e-3, gradients relative L2 < GRAD_TOL each (element-wise fails on
    fp32 summation-order noise where a gradient's entries cancel: 1.2% on one data_bn entry at N=4);
    bf16: outputs relative L2 < 5e-2 (element-wise checks are meaningless after several bf16
    blocks). BN runs in train mode, so every call also updates running stats; outputs do not
    depend on them. (The fp64 equality of the maths is tests/test_batched_encoder.py's job.)"""
    if "bf16" in name:
        H.check_rel_l2(name, got, want, 5e-2)
        return
    H.check_close(name, got[:2], want[:2], atol=1e-3, rtol=1e-3)
    H.check_rel_l2_floored(name, got[2:], want[2:], GRAD_TOL)


def time_providers(provs: Dict[str, Callable], want, device: torch.device, quick: bool, params,
                   checks: Optional[Dict[str, tuple]] = None) -> Dict[str, tuple]:
    """Check every provider, time them, then take each one's peak memory: {name: (Stats, peak MiB)}.
    `checks[name]` = (call, expected) replaces the check of the timed call against `want`.

    GPU: all checks, then H.measure_interleaved in turns, then the peaks. CPU: one provider at a
    time (check, time, peak), each from a trimmed heap. Checking every provider before timing any
    let the six encoders at N=128 fwd+bwd grow the process to 24 GiB (OOM-killed, this box)."""
    kw = dict(warmup=1 if quick else 2, min_reps=3 if quick else 5, min_time_s=0.0 if quick else 1.0, max_reps=20)
    groups = [provs] if device.type == "cuda" else [{name: call} for name, call in provs.items()]
    results = {}
    for group in groups:
        for name, call in group.items():
            H.release_free_memory()             # each provider's check from a trimmed heap (CPU)
            # also the first call (compilation) of compiled providers
            check_call, expected = (checks or {}).get(name, (call, want))
            check_provider(name, check_call(), expected)
        stats = H.measure_interleaved(group, device, **kw)
        for name, call in group.items():
            for p in params:
                p.grad = None
            peak = H.peak_memory_mb(call, device)
            for p in params:
                p.grad = None
            results[name] = (stats[name], peak)
    return results


def rows_of(op: str, results: Dict[str, tuple], device: torch.device, mode: str, shape: str, flops: float,
            samples: int, peak_tflops: Optional[float] = None):
    """One row per provider, with the columns of the module docstring."""
    ref, comp = results.get("reference"), results.get("reference+compile")
    rows = []
    for name, (stats, peak) in results.items():
        bf16 = "bf16" in name
        row = H.timed_row(op, device, name, mode, shape, "bfloat16-autocast" if bf16 else "float32", stats, peak,
                          reference_ms=ref and ref[0].p50, compile_ms=comp and comp[0].p50, flops=flops,
                          floor_dtype=torch.bfloat16 if bf16 else torch.float32,
                          throughput=(samples / (stats.p50 * 1e-3), "samples/s"))
        if peak_tflops and bf16:
            row["pct_of_datasheet_peak"] = 100 * row["tflops"] / peak_tflops
        rows.append(row)
        speedups = "".join(f"  x{row[k]:.2f} vs {k[11:]}" for k in ("speedup_vs_reference", "speedup_vs_compile")
                           if k in row)
        print(f"  {op:18s} {name:18s} {mode:16s} {shape:26s}: {stats.p50:9.2f} ms{speedups}  "
              f"{row['tflops']:.3f} TFLOP/s  {row['pct_of_floor']:.1f}% of floor  peak {peak:.0f} MiB", flush=True)
    return rows


def run(sizes, G: int, device: torch.device, modes, quick: bool, names):
    refs, batched = make_models(G, device)
    params = list(batched.parameters()) + [p for r in refs for p in r.parameters()]

    def seq(x):
        outs = [r(x[g]) for g, r in enumerate(refs)]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    provs = with_providers(names, seq, batched, device)
    rows = []
    for N in sizes:
        g = torch.Generator().manual_seed(N)
        x = torch.randn(G, N, 3, T, V, M, generator=g).to(device)
        fwd_flops = G * encoder_forward_flops(N * M)
        for mode in modes:
            H.fresh_compile_cache()
            if mode == "forward":
                def in_mode(fn):
                    def call():
                        with torch.no_grad():
                            return fn(x)
                    return call
                flops = fwd_flops
            else:
                def in_mode(fn):
                    # every call writes fresh gradients, as a training step after zero_grad(set_to_none)
                    # does: accumulating into .grad across timed calls would add one kernel per
                    # parameter, 6x more of them for the six reference encoders than the batched one
                    def call():
                        for prm in params:
                            prm.grad = None
                        h, p = fn(x)
                        (h.float().sum() + p.float().sum()).backward()
                        return h.detach(), p.detach()
                    return call
                flops = 3 * fwd_flops
            checks = None
            if mode == "forward":
                want = in_mode(seq)()
            else:   # fwd+bwd: the outputs and every parameter gradient, in the reference layout
                def with_grads(call, batched_side):
                    def check():
                        for p in params:
                            p.grad = None
                        out = call()
                        if batched_side:
                            per = batched.split_state({n: p.grad for n, p in batched.named_parameters()}, copy=False)
                            grads = [per[g][n] for g, r in enumerate(refs) for n, _ in r.named_parameters()]
                        else:
                            grads = [p.grad for r in refs for p in r.parameters()]
                        return tuple(out) + tuple(grads)
                    return check
                want = with_grads(in_mode(seq), False)()
                # bf16: the outputs only (no stated tolerance for per-tensor bf16 gradient errors)
                checks = {n: (in_mode(fn), want[:2]) if "bf16" in n else
                          (with_grads(in_mode(fn), n.startswith("skelfast")), want) for n, fn in provs.items()}
            for p in params:
                p.grad = None
            results = time_providers({n: in_mode(fn) for n, fn in provs.items()}, want, device, quick, params, checks)
            rows += rows_of("encoder", results, device, mode, f"G={G},N={N},M={M},T={T},V={V}", flops, G * N)
    return rows


def run_last_block(sizes, G: int, device: torch.device, quick: bool, names):
    """The dominant last block alone (72% of the FLOPs), forward, taken from the same G encoders:
    G sequential reference blocks vs the batched block (module docstring for the columns)."""
    refs, batched = make_models(G, device)
    blocks = [(r.st_gcn_networks[-1], r.A, r.edge_importance[-1]) for r in refs]
    bblock, bA, bimp = batched.st_gcn_networks[-1], batched.A, batched.edge_importance[-1]
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in H.device_name(device)), None)
    cin = blocks[0][0].gcn.conv.in_channels
    rows = []
    for N in sizes:
        H.fresh_compile_cache()
        x = torch.randn(N * M, G * cin, 13, V, device=device)
        xs = [c.contiguous() for c in x.chunk(G, dim=1)]
        if device.type == "cpu":  # the layout BatchedSTGCN runs its blocks in on CPU
            x = x.contiguous(memory_format=torch.channels_last)

        def seq(*_):
            return (torch.cat([blk(xg, A, imp) for (blk, A, imp), xg in zip(blocks, xs)], dim=1),)

        def fused(*_):
            return (bblock(x, bA, bimp, batched.fused),)

        def no_grad(fn):
            def call():
                with torch.no_grad():
                    return fn()
            return call

        want = no_grad(seq)()
        provs = {n: no_grad(fn) for n, fn in with_providers(names, seq, fused, device).items()}
        results = time_providers(provs, want, device, quick, [])
        rows += rows_of("encoder_last_block", results, device, "forward", f"G={G},N={N},M={M},T=13,V={V},{cin}->256",
                        last_block_flops(N * M, G), G * N, peak_tflops=peak)
    return rows


def main(argv=None):
    parser = H.bench_parser(__doc__, "N=4, G=6, no compile providers, few repetitions")
    parser.add_argument("--sizes", type=H.positive_ints, default=None, help="comma-separated N (default 64,128)")
    parser.add_argument("--models", type=H.positive_int, default=6, help="G encoders (default 6)")
    parser.add_argument("--modes", type=H.names_from(MODES), default=list(MODES),
                        help=f"comma list from {','.join(MODES)} (default both)")
    parser.add_argument("--providers", type=H.names_from(ALL_PROVIDERS), default=None,
                        help=f"comma list from {ALL_PROVIDERS} (default: all; "
                        f"--quick: {','.join(QUICK_PROVIDERS)}; skelfast-bf16 only on GPU or with --bf16-cpu)")
    parser.add_argument("--threads", type=H.positive_int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--bf16-cpu", action="store_true", help="also time the bf16 autocast path on CPU")
    parser.add_argument("--last-block", action="store_true",
                        help="also time block 10 alone (TFLOP/s, %% of floor, %% of the bf16 datasheet peak "
                             "on H100/H200)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = args.sizes or ([4] if args.quick else [64, 128])
    modes = args.modes
    bf16 = device.type == "cuda" or args.bf16_cpu
    if args.providers:
        names = args.providers
    else:
        names = [n for n in (QUICK_PROVIDERS if args.quick else ALL_PROVIDERS) if bf16 or "bf16" not in n]
    print(f"skelfast {skelfast.__version__}, torch {torch.__version__}, device {H.device_name(device)}, "
          f"threads {torch.get_num_threads()}, G={args.models}, providers {names}")
    print(H.ceilings_line(device, (torch.float32, torch.bfloat16) if any("bf16" in n for n in names)
                          else (torch.float32,)), flush=True)
    rows = run(sizes, args.models, device, modes, args.quick, names)
    if args.last_block:
        rows += run_last_block(sizes, args.models, device, args.quick, names)
    H.print_table(rows, ["op", "provider", "mode", "shape", "p50_ms", "p20_ms", "p80_ms", "speedup_vs_reference",
                         "speedup_vs_compile", "throughput", "tflops", "pct_of_floor", "pct_of_datasheet_peak",
                         "peak_mem_mb"])
    path = H.write_rows(rows, "encoder", device, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
