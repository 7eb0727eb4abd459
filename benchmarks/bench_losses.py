"""Benchmark B2-B4: fused contrastive losses, forward + backward (method.md §5.3, §5.4, §6.1, §9.4).

Cases (N=128, D=128, tau=0.07, top-1, unit-normalised random features and queues):
- phase1:  6 queue InfoNCE terms (skelfast.ops.info_nce vs reference.info_nce), grads to q;
- phase2:  30 context pairs + 6 IKEM terms (phase2_loss), grads to q and u (768-d);
- distill: 18 teacher-student pairs (relational_distill_loss, 6 teachers, 3 students), grads to s.
Providers: `reference` (eager), `reference+compile` (torch.compile of the same reference function),
`skelfast` (streaming op: C++ on CPU; Triton on GPU when selected). Every provider's loss and
gradients are checked against the eager reference before timing.

Floor (performance.md §2, harness floor()): the largest of
- the GEMMs (forward similarities + query-gradient products, gemm_flops()) at the GEMM rate of the
  unit skelfast runs them on: fp32 on CPU; on CUDA, phase 1 runs the fully fused Triton InfoNCE
  kernel, three TF32 products each (tf32x3: a third of the TF32 rate measured in the same run),
  while phase 2 and distillation (pairs, 768-d sources) run their similarity GEMMs on cuBLAS in
  fp32, which the harness pins to IEEE (fp32 rate);
- the queues read once (queue_bytes()) at the measured copy bandwidth;
- the exponentials any implementation needs (exp_count()) at the exp rate (measured on CPU, the
  published SFU rate on GPU).
`floor_bound` names the binding term, `pct_of_floor` = floor / median time; the achieved TFLOP/s is
at the nominal FLOPs. On CPU the GEMM term binds at every K.

Peak memory: `peak_mem_mb` is the shared harness measure (every allocation through torch's
allocator, the C++ kernels' workspaces included, above the inputs). `rss_peak_mb` is the rise of
the process's peak resident set (VmHWM, reset through /proc/self/clear_refs) during one call: it
also sees memory outside torch's allocator (oneDNN's scratchpads). Both are in the printed table;
the CSV keeps the harness measure in peak_mem_mb.

Usage: python -m benchmarks.bench_losses [--quick] [--cases phase1,phase2,distill] [--K 4096,32768]
       [--providers reference,reference+compile,skelfast] [--queue-dtype bfloat16] [--device cuda]
"""
from __future__ import annotations

import gc
import re
import sys
from typing import Callable, Dict, List

import torch

import skelfast
from skelfast import ops
from skelfast.cpu_allocator import rss_tracks_live_memory
from skelfast.reference import losses as R
from skelfast.reference.modalities import nrm

from . import _harness as H

N, D, G, S, TAU = 128, 128, 6, 3, 0.07


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        return int(re.search(key + r":\s+(\d+)", fh.read()).group(1)) / 1024.0


def rss_peak_mb(fn: Callable[[], object]) -> float:
    """Rise of the peak resident set during fn() (Linux; NaN elsewhere). Measured with glibc's
    freed blocks returned to the OS (cpu_allocator.rss_tracks_live_memory), so that memory kept
    from earlier calls does not hide this call's peak; the timings run with the tuned allocator."""
    try:
        gc.collect()
        with rss_tracks_live_memory():
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset VmHWM to the current RSS
            base = _status_mb("VmRSS")
            fn()
            return _status_mb("VmHWM") - base
    except (OSError, AttributeError):
        return float("nan")


def gemm_flops(case: str, K: int, n: int = N, d: int = D) -> float:
    """FLOPs of the GEMMs any implementation needs for forward + query gradient (similarities
    once, their transpose product once): the compute floor of a case with G = 6 modalities (S = 3
    students), batch n, feature dim d (768-d IKEM / student features = G*d) and K queue columns.
    Also the loss part of bench_step's floor."""
    if case == "phase1":
        return 2 * (2 * G * n * d * K)
    if case == "phase2":
        return 2 * (2 * G * n * d * K + 2 * G * n * G * d * K)
    if case == "distill":
        return 2 * G * n * d * K + 2 * (2 * S * n * G * d * K)
    raise ValueError(case)


def queue_bytes(case: str, K: int, elem: int = 4, d: int = D) -> float:
    """Bytes of the queues a case reads: the G per-modality queues (d x K), plus the 768-d teacher
    queue in distillation."""
    return G * d * K * elem * (2 if case == "distill" else 1)


def exp_count(case: str, K: int, n: int = N) -> float:
    """Exponentials over the queues any implementation evaluates (performance.md §6 accounting):
    phase1 G per (row, column); phase2 G key terms + G*(G-1)/2 context products (the product of a
    pair is symmetric, so its two ordered pairs share them) + G IKEM terms = 27; distill S student
    terms + S*G teacher-student products = 21."""
    per = {"phase1": G, "phase2": G + G * (G - 1) // 2 + G, "distill": S + S * G}[case]
    return float(per * n * K)


def make_inputs(case: str, K: int, device: torch.device, seed: int = 0,
                queue_dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
    """Unit features and queues. With a bf16/fp16 queue_dtype, skelfast reads the low-precision
    queues while the references (whose bmm needs one dtype) get the same rounded values in fp32."""
    g = torch.Generator().manual_seed(seed)

    def unit(*shape, dim=-1):
        return nrm(torch.randn(*shape, generator=g), dim=dim).to(device)

    x = {"q": unit(G, N, D), "k": unit(G, N, D), "queues": unit(G, D, K, dim=1).to(queue_dtype)}
    if case == "phase2":
        x["u"] = unit(G, N, G * D)
    if case == "distill":
        x["s"] = unit(S, N, G * D)
        x["QT"] = unit(G * D, K, dim=0).to(queue_dtype)
    return x


def reference_view(x: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {name: (t.float() if name in ("queues", "QT") else t) for name, t in x.items()}


def loss_fn(case: str, lib):
    """(function of the differentiable inputs, names of those inputs) for one case and library."""
    if case == "phase1":
        return (lambda x, q: lib.info_nce(q, x["k"], x["queues"], TAU).sum()), ["q"]
    if case == "phase2":
        return (lambda x, q, u: lib.phase2_loss(q, u, x["k"], x["queues"], TAU, 1)), ["q", "u"]
    if case == "distill":
        return (lambda x, s: lib.relational_distill_loss(x["q"], s, x["queues"], x["QT"], TAU, 1).sum()), ["s"]
    raise ValueError(case)


CASES = ("phase1", "phase2", "distill")
PROVIDERS = ("reference", "reference+compile", "skelfast")


def providers(case: str, names: List[str]):
    out = {}
    ref_fn0, grad_names = loss_fn(case, R)
    sk_fn, _ = loss_fn(case, ops)
    # fp32 queues: reference_view returns the same tensors (no copy inside the timed call).
    ref_fn = (lambda x, *a: ref_fn0(x["_ref"], *a))  # noqa: E731
    if "reference" in names:
        out["reference"] = ref_fn
    if "reference+compile" in names:
        compiled_inner = H.compile_static(lambda xr, *a: ref_fn0(xr, *a))
        out["reference+compile"] = lambda x, *a: compiled_inner(x["_ref"], *a)
    if "skelfast" in names:
        out["skelfast"] = sk_fn
    return out, grad_names


def full_step(fn, x, grad_names):
    """One forward + backward; returns (loss, grads)."""
    leaves = [x[n].detach().requires_grad_(True) for n in grad_names]
    loss = fn(x, *leaves)
    grads = torch.autograd.grad(loss, leaves)
    return loss.detach(), grads


def run(cases, Ks, provider_names, device, quick, queue_dtype=torch.float32):
    rows = []
    for case in cases:
        for K in Ks:
            H.fresh_compile_cache()
            x = make_inputs(case, K, device, queue_dtype=queue_dtype)
            x["_ref"] = reference_view(x)
            provs, grad_names = providers(case, provider_names)
            # the reference result checks every provider, timed or not (--providers skelfast alone too)
            ref_fn = provs["reference"] if "reference" in provs else providers(case, ["reference"])[0]["reference"]
            want = full_step(ref_fn, x, grad_names)
            steps = {name: (lambda fn=fn: full_step(fn, x, grad_names)) for name, fn in provs.items()}
            for name, step in steps.items():
                H.release_free_memory()   # each provider's check from a trimmed heap (CPU)
                got = step()  # warm-up (and compilation)
                H.check_close(name, [got[0]] + list(got[1]), [want[0]] + list(want[1]), atol=1e-4, rtol=1e-4)
            # H.measure_interleaved: in turns on GPU; the eager providers' large-K calls take seconds
            heavy = K >= 16384 and len(steps) > 1
            all_stats = H.measure_interleaved(steps, device, warmup=0 if heavy else 1, min_reps=2 if quick else 5,
                                              min_time_s=0.0 if heavy else (0.2 if quick else 1.0))
            results = {}
            for name, step in steps.items():
                stats = all_stats[name]
                peak = H.peak_memory_mb(step, device)
                rss = rss_peak_mb(step) if device.type == "cpu" else float("nan")
                results[name] = (stats, peak, rss)
                print(f"  {case} K={K} {name}: {stats.p50:.1f} ms, peak {peak:.1f} MiB (harness), "
                      f"{rss:.1f} MiB (rss)", flush=True)
            ref = results.get("reference", (None,))[0]
            comp = results.get("reference+compile", (None,))[0]
            for name, (stats, peak, rss) in results.items():
                extra = {"rss_peak_mb": round(rss, 2)}
                if "reference" in results:
                    extra["mem_ratio_vs_reference"] = results["reference"][1] / max(peak, 1e-9)
                rows.append(H.timed_row(
                    f"losses_{case}", device, name, "full",
                    f"N={N},D={D},K={K},G={G}" + (f",S={S}" if case == "distill" else ""),
                    "float32" if queue_dtype == torch.float32 else f"float32,queue={str(queue_dtype)[6:]}",
                    stats, peak, reference_ms=ref and ref.p50, compile_ms=comp and comp.p50,
                    flops=gemm_flops(case, K), bytes_moved=queue_bytes(case, K, x["queues"].element_size()),
                    exps=exp_count(case, K), tf32x3=device.type == "cuda" and case == "phase1",
                    throughput=(gemm_flops(case, K) / (stats.p50 * 1e-3) / 1e12, "TFLOP/s"), **extra))
            del x
            gc.collect()
    return rows


def main(argv=None):
    parser = H.bench_parser(__doc__, "K=4096 only, short timing (smoke test)")
    parser.add_argument("--cases", type=H.names_from(CASES), default=list(CASES),
                        help=f"comma list from {','.join(CASES)} (default all)")
    parser.add_argument("--K", type=H.positive_ints, default=None,
                        help="comma-separated queue sizes (default 4096,32768,65536)")
    parser.add_argument("--providers", type=H.names_from(PROVIDERS), default=list(PROVIDERS),
                        help=f"comma list from {','.join(PROVIDERS)} (default all)")
    parser.add_argument("--queue-dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the queues read by skelfast (references get the same values in fp32)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    Ks = args.K or ([4096] if args.quick else [4096, 32768, 65536])
    print(f"skelfast {skelfast.__version__}, torch {torch.__version__}, {H.device_name(device)}, "
          f"threads {torch.get_num_threads()}, backends {ops.available_backends()}")
    print(H.ceilings_line(device, exps=True, tf32=True), flush=True)
    rows = []
    for case in args.cases:   # written case by case: a run stopped by a time limit keeps the finished cases
        case_rows = run([case], Ks, args.providers, device, args.quick, getattr(torch, args.queue_dtype))
        path = H.write_rows(case_rows, "losses", device, args.out_dir)
        print(f"wrote {path}", flush=True)
        rows += case_rows
    H.print_table(rows, ["op", "provider", "shape", "p50_ms", "p20_ms", "p80_ms", "speedup_vs_reference",
                         "speedup_vs_compile", "tflops", "pct_of_floor", "peak_mem_mb", "mem_ratio_vs_reference",
                         "rss_peak_mb"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
