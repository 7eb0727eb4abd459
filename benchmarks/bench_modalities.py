"""Benchmark B1: the six modalities of both augmented views of a training step (method.md §3.3).

Providers: `reference` (eager, skelfast.reference.modalities), `reference+compile`
(torch.compile of the same function), `skelfast` (compiled C++ kernel on CPU, CUDA kernel on GPU)
and `skelfast-triton` (GPU only). Every provider is checked against the reference before timing.

Reports median/p20/p80 ms, speed-ups over eager and over compile, achieved GB/s, % of the
memory-bandwidth floor (bytes read + written once, at the copy bandwidth measured in the same run)
and peak memory. Usage: python -m benchmarks.bench_modalities [--quick] [--device cuda]
"""
from __future__ import annotations

import contextlib
import sys

import torch

import skelfast
from skelfast import MODALITIES6, ops, reference

from . import _harness as H

T, V, M = 50, 25, 2


def make_inputs(N: int, device: torch.device, seed: int):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(N, 3, T, V, M, generator=g).to(device) for _ in range(2)]
    frames = torch.randint(30, 301, (N,), generator=g).to(device)
    return views, frames


def providers(device: torch.device):
    def eager(views, frames):
        return [reference.modalities(v, frames) for v in views]

    compiled_ref = H.compile_static(reference.modalities)

    def compiled(views, frames):
        return [compiled_ref(v, frames) for v in views]

    def fused(views, frames):
        return [ops.modalities(v, frames) for v in views]

    out = {"reference": eager, "reference+compile": compiled, "skelfast": fused}
    if device.type == "cuda" and "triton" in ops.available_backends():
        out["skelfast-triton"] = fused   # the same calls, run inside backend_for("skelfast-triton")
    return out


@contextlib.contextmanager
def backend_for(provider: str):
    """The skelfast backend a provider runs under, selected around its whole check and timing:
    switching per call would attach and detach the Triton registrations inside the timed loop."""
    if provider != "skelfast-triton":
        yield
        return
    before = ops.get_backend()
    ops.set_backend("triton")
    try:
        yield
    finally:
        ops.set_backend(before)


def run(sizes, device: torch.device, quick: bool):
    print(H.ceilings_line(device))
    rows = []
    for N in sizes:
        H.fresh_compile_cache()
        views, frames = make_inputs(N, device, seed=N)
        bytes_moved = 2 * (N * 3 * T * V * M * 4) * (1 + len(MODALITIES6))  # 2 views: read x, write 6 outputs
        with torch.no_grad():
            want = providers(device)["reference"](views, frames)
            results = {}
            for name, fn in providers(device).items():
                with backend_for(name):
                    H.check_close(name, fn(views, frames), want, atol=1e-4, rtol=1e-4)
                    stats = H.measure(lambda: fn(views, frames), device, min_time_s=0.2 if quick else 1.0,
                                      min_reps=5 if quick else 20)
                    peak = H.peak_memory_mb(lambda: fn(views, frames), device)
                    backend = H.skelfast_backend(device) if name.startswith("skelfast") else ""
                results[name] = (stats, peak, backend)
        rows += [H.timed_row("modalities", device, name, "forward", f"N={N},T={T},V={V},M={M},views=2", "float32",
                             stats, peak, reference_ms=results["reference"][0].p50,
                             compile_ms=results["reference+compile"][0].p50, bytes_moved=bytes_moved,
                             backend=backend)
                 for name, (stats, peak, backend) in results.items()]
    return rows


def main(argv=None):
    parser = H.bench_parser(__doc__, "N=32 only, short timing (smoke test)")
    parser.add_argument("--sizes", type=H.positive_ints, default=None,
                        help="comma-separated batch sizes (default 32,128,256)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    sizes = args.sizes or ([32] if args.quick else [32, 128, 256])
    print(f"skelfast {skelfast.__version__}, torch {torch.__version__}, backends {ops.available_backends()}")
    rows = run(sizes, device, args.quick)
    H.print_table(rows, ["provider", "shape", "p50_ms", "p20_ms", "p80_ms", "speedup_vs_reference",
                         "speedup_vs_compile", "gbs", "pct_of_floor", "floor_us", "peak_mem_mb"])
    path = H.write_rows(rows, "modalities", device, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
