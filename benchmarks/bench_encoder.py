"""Benchmark B4: G ST-GCN encoders (method.md §4.2), sequential reference vs batched skelfast.

Providers (each checked against `reference` before it is timed):
  reference          G sequential skelfast.reference.STGCN encoders, eager fp32
  reference+compile  the same G-encoder loop under torch.compile (one graph)
  skelfast           skelfast.nn.BatchedSTGCN, fp32 (grouped convs + skelfast.ops.graph_conv)
  skelfast+compile   the batched encoder under torch.compile (fuses BN/ReLU/add passes)
  skelfast-bf16      the same under bf16 autocast (GPU by default; --bf16-cpu adds it on CPU)
Modes: forward (train mode, no_grad: the key-encoder / teacher pass) and forward+backward (the
query-encoder pass). Dropout is 0 so outputs are comparable. Reports median/p20/p80 ms,
samples/s (G*N encoder samples per second), achieved TFLOP/s at the nominal model FLOPs
(performance.md §4 counting: dense einsum, 157 GFLOP per encoder forward at N*M=256, T=50;
forward+backward = 3x) and peak memory.

Usage: python -m benchmarks.bench_encoder [--quick] [--device cpu|cuda] [--sizes 64,128]
       [--models 6] [--threads N] [--modes forward,forward+backward] [--last-block] [--bf16-cpu]
--last-block adds block 10 alone (72% of the FLOPs) in fp32 and bf16 with % of the bf16 peak.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict

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


def check_rel_l2(name: str, got, want, tol: float) -> None:
    """bf16 providers: relative L2 error of each output vs the fp32 reference below `tol` (stated
    tolerance; element-wise checks are meaningless after 10 bf16 blocks)."""
    for g, w in zip(got, want):
        rel = ((g.float() - w.float()).norm() / w.float().norm().clamp_min(1e-30)).item()
        if not rel < tol:
            raise AssertionError(f"provider {name!r}: relative L2 error {rel:.3g} >= {tol}")


# Dense tensor-core peaks (performance.md §2 datasheet); used for "% of peak" on the last block.
BF16_PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4}


def last_block_flops(n_seq: int, G: int) -> float:
    """FLOPs of block 10 (64 -> 256, T=13) forward for G encoders: 1x1 + dense einsum + 9x1 + residual."""
    t, cin, cout = 13, 64, 256
    macs = cin * K * cout * t * V + K * cout * V * V * t + cout * cout * TEMPORAL_KERNEL * t * V + cin * cout * t * V
    return 2.0 * macs * n_seq * G


def run_last_block(sizes, G: int, device: torch.device, quick: bool):
    """The dominant last block alone (72% of the FLOPs): fp32 and bf16-autocast forward, TFLOP/s
    and, on H100/H200, the fraction of the dense bf16 tensor-core peak (target >= 40%)."""
    from skelfast.nn import BatchedSTGCNBlock
    torch.manual_seed(0)
    block = BatchedSTGCNBlock(G, 64, 256, stride=1, residual="auto").to(device)
    A = STGCN(init=None).A.to(device)
    imp = torch.ones(G, K, V, V, device=device)
    peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in H.device_name(device)), None)
    rows = []
    for N in sizes:
        x = torch.randn(N * M, G * 64, 13, V, device=device)
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        flops = last_block_flops(N * M, G)
        for dtype in ("float32", "bfloat16"):
            def call():
                with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                    return block(x, A, imp)
            stats = H.measure(call, device, warmup=1 if quick else 3, min_reps=3 if quick else 10,
                              min_time_s=0.0 if quick else 1.0, max_reps=50)
            tflops = flops / (stats.p50 * 1e-3) / 1e12
            row = H.base_row("encoder_last_block", device)
            row.update(provider="skelfast", mode="forward", shape=f"G={G},N={N},M={M},T=13,V={V},64->256",
                       dtype=dtype, p50_ms=stats.p50, p20_ms=stats.p20, p80_ms=stats.p80, tflops=tflops,
                       throughput=tflops, throughput_unit="TFLOP/s",
                       pct_of_floor=(100 * tflops / peak) if (peak and dtype == "bfloat16") else "")
            rows.append(row)
            pct = f"  {row['pct_of_floor']:.1f}% of bf16 peak" if row["pct_of_floor"] != "" else ""
            print(f"  last block {dtype:9s} N={N:4d}: {stats.p50:9.2f} ms  {tflops:.3f} TFLOP/s{pct}", flush=True)
    return rows


def make_models(G: int, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    refs = [STGCN(dropout=0.0).to(device) for _ in range(G)]
    with torch.no_grad():
        for r in refs:  # non-trivial edge importance, so the E path is exercised
            for p in r.edge_importance:
                p.add_(0.1 * torch.randn_like(p))
    batched = BatchedSTGCN.from_reference(refs)
    return refs, batched


def providers(refs, batched, device: torch.device, bf16: bool) -> Dict[str, callable]:
    def seq(x):
        outs = [r(x[g]) for g, r in enumerate(refs)]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])

    compiled_seq = torch.compile(seq)
    out = {"reference": seq, "reference+compile": compiled_seq, "skelfast": batched,
           "skelfast+compile": torch.compile(batched)}
    if bf16:
        def lowp(x):
            with torch.autocast(device.type, dtype=torch.bfloat16):
                h, p = batched(x)
            return h.float(), p.float()
        out["skelfast-bf16"] = lowp
    return out


def run(sizes, G: int, device: torch.device, modes, quick: bool, bf16: bool):
    refs, batched = make_models(G, device)
    params = list(batched.parameters()) + [p for r in refs for p in r.parameters()]
    rows = []
    for N in sizes:
        g = torch.Generator().manual_seed(N)
        x = torch.randn(G, N, 3, T, V, M, generator=g).to(device)
        fwd_flops = G * encoder_forward_flops(N * M)
        provs = providers(refs, batched, device, bf16)
        for mode in modes:
            results = {}
            want = None
            for name, fn in provs.items():
                if mode == "forward":
                    def call(fn=fn):
                        with torch.no_grad():
                            return fn(x)
                    flops = fwd_flops
                else:
                    def call(fn=fn):
                        h, p = fn(x)
                        (h.float().sum() + p.float().sum()).backward()
                        return h.detach(), p.detach()
                    flops = 3 * fwd_flops
                got = call()
                if want is None:
                    want = got
                # BN runs in train mode, so every call also updates running stats; outputs do not
                # depend on them. bf16 gets a looser, stated tolerance.
                if "bf16" in name:
                    check_rel_l2(name, got, want, 5e-2)
                else:
                    H.check_close(name, got, want, atol=1e-3, rtol=1e-3)
                stats = H.measure(call, device, warmup=1 if quick else 2, min_reps=3 if quick else 5,
                                  min_time_s=0.0 if quick else 1.0, max_reps=20)
                for p in params:
                    p.grad = None
                peak = H.peak_memory_mb(call, device)
                for p in params:
                    p.grad = None
                results[name] = (stats, peak, flops)
            for name, (stats, peak, flops) in results.items():
                row = H.base_row("encoder", device)
                row.update(provider=name, mode=mode, shape=f"G={G},N={N},M={M},T={T},V={V}",
                           dtype="bfloat16-autocast" if "bf16" in name else "float32",
                           p50_ms=stats.p50, p20_ms=stats.p20, p80_ms=stats.p80, peak_mem_mb=round(peak, 1),
                           speedup_vs_reference=results["reference"][0].p50 / stats.p50,
                           speedup_vs_compile=results["reference+compile"][0].p50 / stats.p50,
                           throughput=G * N / (stats.p50 * 1e-3), tflops=flops / (stats.p50 * 1e-3) / 1e12)
                # the shared CSV schema has no TFLOP/s column: it rides along in the unit field
                row["throughput_unit"] = f"samples/s; TFLOP/s={row['tflops']:.4f}"
                rows.append(row)
                print(f"  {name:18s} {mode:16s} N={N:4d}: {stats.p50:9.1f} ms  x{row['speedup_vs_reference']:.2f} vs ref"
                      f"  x{row['speedup_vs_compile']:.2f} vs compile  {row['tflops']:.3f} TFLOP/s  peak {peak:.0f} MiB",
                      flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N=4, G=6, few repetitions (smoke test)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default=None, help="comma-separated N (default 64,128)")
    parser.add_argument("--models", type=int, default=6, help="G encoders (default 6)")
    parser.add_argument("--modes", default="forward,forward+backward")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--bf16-cpu", action="store_true", help="also time the bf16 autocast path on CPU")
    parser.add_argument("--last-block", action="store_true",
                        help="also time block 10 alone (fp32 / bf16 TFLOP/s, % of bf16 peak on H100/H200)")
    parser.add_argument("--out-dir", default=None, help="CSV folder (default benchmarks/results)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else ([4] if args.quick else [64, 128])
    modes = args.modes.split(",")
    bf16 = device.type == "cuda" or args.bf16_cpu
    print(f"skelfast {skelfast.__version__}, torch {torch.__version__}, device {H.device_name(device)}, "
          f"threads {torch.get_num_threads()}, G={args.models}")
    rows = run(sizes, args.models, device, modes, args.quick, bf16) if modes != [""] else []
    if args.last_block:
        rows += run_last_block(sizes, args.models, device, args.quick)
    H.print_table(rows, ["provider", "mode", "shape", "p50_ms", "p20_ms", "p80_ms", "speedup_vs_reference",
                         "speedup_vs_compile", "throughput", "tflops", "peak_mem_mb"])
    path = H.write_rows(rows, "encoder", device, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
