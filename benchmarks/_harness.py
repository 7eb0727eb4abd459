"""Shared benchmark harness (engineering.md §8, performance.md §7).

- measure(fn): warm-up (on CPU until calls stop page-faulting), device sync, repeated timing;
  median with p20/p80 in milliseconds. measure_interleaved({name: fn}): the same for the providers
  of one case, on GPU timed in turns so that machine drift cannot favour one of them (on CPU one
  provider after another by default; see its docstring).
- peak_memory_mb(fn): peak bytes allocated during one call (CUDA allocator stats on GPU, the CPU
  profiler's raw allocation records otherwise); cuda_graph_pool_mb() for what CUDA graphs hold.
- check_close(got, want) / check_rel_l2(got, want): every provider's output is checked against the
  reference before it is timed, so a fast wrong kernel never gets a number.
- floor(bytes_moved, flops): the performance.md §2 floor max(bytes / copy bandwidth, FLOPs / GEMM
  rate) with both ceilings measured on this device in this run, and its binding term.
- timed_row(...): one result row: timing, peak memory, speed-ups over the eager reference and over
  torch.compile, achieved GB/s and TFLOP/s, floor and % of floor.
- CPU allocator: tuned for every provider at import (CPU_ALLOCATOR below).
- CUDA fp32: pinned to IEEE (no TF32) for every provider at import, so fp32 rows compare the same
  arithmetic (skelfast/precision.py: cuDNN convolutions default to TF32, cuBLAS matmuls do not);
  SKELFAST_BENCH_TF32=1 leaves torch's defaults instead. bf16 rows measure the tensor cores.
- write_rows(rows, name, device): upsert into benchmarks/results/<device_slug>.csv, one CSV per
  device for every benchmark (rows are keyed by op, provider, mode, shape, dtype and versions).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from skelfast.cpu_allocator import release_free_memory, tune_cpu_allocator  # noqa: F401 (re-exported)
from skelfast.precision import fp32_precision_summary, pin_ieee_fp32

# Every provider of every benchmark runs with the CPU allocator setting the trainer uses (freed
# blocks stay in-process; skelfast/cpu_allocator.py), so the comparison is at equal conditions.
# SKELFAST_CPU_ALLOCATOR=default measures glibc's default behaviour instead.
CPU_ALLOCATOR = "tuned" if tune_cpu_allocator() else "default"
if os.environ.get("SKELFAST_BENCH_TF32") != "1":
    pin_ieee_fp32()

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# --quick smoke runs write here unless --out-dir says otherwise (git-ignored): their rows must not
# replace the committed full-size results of the same cases
SCRATCH_DIR = os.path.join(RESULTS_DIR, "_scratch")
KEY_FIELDS = ["op", "provider", "mode", "shape", "dtype", "device_name", "torch_version", "skelfast_version", "git_sha"]
# What identifies a case in a device's CSV: a re-run replaces the row of the same case whatever the
# versions or commit (earlier results live in git history; `--compare OLD.csv` compares files).
CASE_FIELDS = KEY_FIELDS[:6]
# throughput/throughput_unit: the natural rate of a case (samples/s, files/s, or the achieved GB/s);
# gbs / tflops: achieved rates at the case's minimal bytes / nominal FLOPs; pct_of_floor = floor_us /
# median time with floor_bound the binding term ("memory", "compute", or a labelled variant);
# pct_of_datasheet_peak: vs a published peak (performance.md §2), only where a bench states one;
# backend: what a skelfast provider's ops ran on (skelfast_backend()), empty for the references.
VALUE_FIELDS = ["p50_ms", "p20_ms", "p80_ms", "peak_mem_mb", "speedup_vs_reference", "speedup_vs_compile",
                "throughput", "throughput_unit", "gbs", "tflops", "pct_of_floor", "floor_us", "floor_bound",
                "pct_of_datasheet_peak", "timestamp", "run_id", "backend"]
# One id per benchmark process: rows of a case written by different runs (a provider that failed or
# was left out of a re-run keeps its older row) are told apart by it in the report.
# The suite (python -m benchmarks) gives its benchmark processes one run id, so that a comparison
# after the run reads this run's rows only.
RUN_ID = (os.environ.get("SKELFAST_BENCH_RUN_ID")
          or f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")


@dataclass
class Stats:
    p50: float
    p20: float
    p80: float
    n: int


def compile_static(fn: Callable) -> Callable:
    """torch.compile for a baseline provider, one static graph per shape (`dynamic=False`).

    With the default, a compiled function called at a second size (N=64 then 128, K=4096 then
    32768) is recompiled with that size symbolic (automatic dynamic shapes), which is not what a
    user compiling for the one shape of a training run gets. Callers start every case with
    fresh_compile_cache(), so the per-code recompile limit is never reached either (past it, dynamo
    silently runs the function eagerly)."""
    return torch.compile(fn, dynamic=False)


def fresh_compile_cache() -> None:
    """Forget every compiled graph (torch._dynamo.reset()): each case's compiled providers compile
    for its own shapes in their (untimed) checking call, whatever earlier cases compiled."""
    torch._dynamo.reset()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# CPU warm-up goes on (up to this many extra calls) while a call still page-faults more than
# WARM_FAULT_PAGES: the first calls of a large case grow the heap page by page (measured, batched
# encoders N=64: 1.7M, 0.5M, 0.06M faults in calls 1-3, then none), which is not the steady state
# a training loop runs in.
MAX_EXTRA_WARMUP = 6
WARM_FAULT_PAGES = 2**14   # 64 MiB of 4 KiB pages


def _minor_faults() -> int:
    try:
        import resource
    except ImportError:    # not POSIX: no fault counter, warm-up count as given
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def measure(fn: Callable[[], object], device: torch.device, warmup: int = 3, min_reps: int = 10,
            min_time_s: float = 0.5, max_reps: int = 1000) -> Stats:
    """Median/p20/p80 wall time of fn() in ms, synchronising the device around every call.
    On CPU the free memory kept from earlier cases is released first (each case reaches its own
    steady state: trimming is off in the tuned allocator) and the warm-up is extended while calls
    still page-fault (MAX_EXTRA_WARMUP above)."""
    if device.type == "cpu":
        release_free_memory()
    for _ in range(warmup):
        fn()
    if device.type == "cpu":
        for _ in range(MAX_EXTRA_WARMUP):
            before = _minor_faults()
            fn()
            if _minor_faults() - before < WARM_FAULT_PAGES:
                break
    sync(device)
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_time_s):
        times.append(_time_once(fn, device))
    return _stats(times)


def measure_interleaved(fns: Dict[str, Callable[[], object]], device: torch.device, warmup: int = 3,
                        min_reps: int = 10, min_time_s: float = 0.5, max_reps: int = 1000,
                        per_turn: Optional[int] = None) -> Dict[str, Stats]:
    """measure() for several providers of one case, timed in turns: each round gives every
    provider one turn of `per_turn` timed calls (default 1; the order reversed every other round),
    so slow drift of the machine (on the shared CPU box the eager reference moved 1.7-2x between
    runs minutes apart) lands on all of them alike. The repetition limits apply per provider,
    min_time_s to each provider's own timed total.

    CPU, per_turn None (the default): one provider after another, measure() each. Turns were tried
    and dropped as the CPU default: sharing the heap (the tuned allocator never trims) let one
    provider's free lists fragment another's, and the six encoders at N=128 fwd+bwd were
    OOM-killed at 24 GiB; trimming before every turn kept them at 16.7 GiB but re-faulted the
    working set for several calls per turn (3 rounds of 2 providers did not finish in 10 minutes).
    CPU with per_turn given: turns, each warm-up and turn starting with release_free_memory(), a
    call counting only once it stays under WARM_FAULT_PAGES page faults (at most MAX_EXTRA_WARMUP
    such calls per turn). Callers release the heap before each provider's checking call too."""
    cpu = device.type == "cpu"
    if cpu and per_turn is None:
        return {name: measure(fn, device, warmup, min_reps, min_time_s, max_reps) for name, fn in fns.items()}
    per_turn = per_turn or 1
    for fn in fns.values():
        if cpu:
            release_free_memory()
        for _ in range(warmup):
            fn()
    sync(device)
    names = list(fns)
    times: Dict[str, List[float]] = {n: [] for n in names}
    spent = dict.fromkeys(names, 0.0)

    def pending() -> bool:
        n = min(len(t) for t in times.values())
        return n < max_reps and (n < min_reps or min(spent.values()) < min_time_s)

    rounds = 0
    while pending():
        for name in (names if rounds % 2 == 0 else reversed(names)):
            if cpu:
                release_free_memory()
            taken, calls = 0, 0
            while taken < per_turn and calls < per_turn + MAX_EXTRA_WARMUP:
                before = _minor_faults() if cpu else 0
                ms = _time_once(fns[name], device)
                calls += 1
                if cpu and _minor_faults() - before >= WARM_FAULT_PAGES and calls <= MAX_EXTRA_WARMUP:
                    continue   # still re-faulting after the release: not the steady state
                times[name].append(ms)
                spent[name] += ms * 1e-3
                taken += 1
        rounds += 1
    return {n: _stats(t) for n, t in times.items()}


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one fn() call in ms (CUDA events on GPU)."""
    if device.type == "cuda":
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _stats(times: List[float]) -> Stats:
    # inclusive: interpolate within the samples (the default extrapolates, e.g. negative p20 at n=2)
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) >= 2 else times * 9
    return Stats(p50=statistics.median(times), p20=q[1], p80=q[7], n=len(times))


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory allocated while fn() runs, in MiB, above what was allocated before.

    CUDA: torch.cuda.max_memory_allocated. CPU: the profiler's raw memory records (every allocation
    and free made through torch's CPU allocator, any thread), integrated in time order.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    current = peak = 0
    for _, nbytes in _cpu_memory_records(prof):
        current += nbytes
        peak = max(peak, current)
    return peak / 2**20


def cuda_graph_pool_mb(device: torch.device) -> float:
    """MiB held by CUDA-graph private memory pools on `device` (snapshot segments outside the
    default pool (0, 0)). A replayed graph allocates nothing, so peak_memory_mb of a call that
    replays one misses the buffers the graph keeps in its pool: add this for such a provider."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return sum(seg["total_size"] for seg in torch.cuda.memory_snapshot()
               if seg.get("device", index) == index and tuple(seg["segment_pool_id"]) != (0, 0)) / 2**20


def _cpu_memory_records(prof) -> List[Tuple[int, int]]:
    """(time, bytes) of every CPU allocation (+) and free (-) the profiler saw, in time order.

    The raw records, not the per-op self memory of prof.events(): an op's own net allocation nets
    out whatever it allocates and frees inside itself, so a torch.compile'd region (one op in the
    profile) and the scratch of a C++ kernel would both count as about zero (measured: a compiled
    mm-relu-mm came out at 0 MiB instead of 32). Falls back to the per-op records where this torch
    has no kineto_results."""
    results = getattr(getattr(prof, "profiler", None), "kineto_results", None)
    if results is not None:
        return sorted((e.start_ns(), e.nbytes()) for e in results.events()
                      if e.name() == "[memory]" and str(e.device_type()) == "DeviceType.CPU")
    events = [e for e in prof.events() if getattr(e, "self_cpu_memory_usage", 0)]
    return sorted((e.time_range.start, e.self_cpu_memory_usage) for e in events)


@contextlib.contextmanager
def _quiet_stderr():
    """The CPU profiler's C++ side logs start/stop lines to fd 2; keep benchmark output readable."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# Measured ceilings (copy bandwidth, GEMM and exp rates), once per run and size. Each is taken at
# the p20 time of its calls, not the median: a ceiling is what the unit reaches, and on the shared
# CPU box a slow spell during the short measurement once read the GEMM rate as 90 GFLOP/s at the
# median, against 126-153 in the runs beside it (every % of floor of that run then read ~1.5x high).
_CEILINGS: Dict[tuple, float] = {}


def default_copy_mib(device: torch.device) -> int:
    """Size of the copy that measures bandwidth: well above the last-level cache (H100/H200 L2 is
    50/60 MB, so 256 MiB on GPU; 64 MiB keeps the CPU measurement short)."""
    return 256 if device.type == "cuda" else 64


def copy_bandwidth_gbs(device: torch.device, mbytes: Optional[float] = None) -> float:
    """Read+write bandwidth (GB/s) of cloning an fp32 buffer of `mbytes` MiB (default
    default_copy_mib: the DRAM/HBM roofline), measured once per run and size."""
    mbytes = mbytes or default_copy_mib(device)
    key = ("copy", str(device), mbytes)
    if key not in _CEILINGS:
        x = torch.empty(max(1, int(mbytes * 2**20) // 4), dtype=torch.float32, device=device).normal_()
        stats = measure(lambda: x.clone(), device, warmup=2, min_reps=5, min_time_s=0.3)
        _CEILINGS[key] = 2 * x.numel() * 4 / (stats.p20 * 1e-3) / 1e9
    return _CEILINGS[key]


def gemm_tflops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, tf32: bool = False) -> float:
    """Dense GEMM rate (TFLOP/s) at n x n x n, measured once per run: the compute roofline for
    that dtype on this device. GPU: torch.matmul (fp32 pinned to IEEE at import; tf32=True
    measures the TF32 tensor cores instead). CPU: the faster of torch.matmul (MKL) and the same GEMM
    as a channels-last 1x1 convolution (oneDNN): on AMD CPUs MKL's sgemm reaches about half of what
    oneDNN does, and the encoders' convolutions run on oneDNN, so matmul alone would put them above
    100% of the floor."""
    tf32 = tf32 and device.type == "cuda" and dtype == torch.float32
    key = ("gemm", str(device), dtype, n, tf32)
    if key not in _CEILINGS:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        calls = [lambda: a @ b]
        if device.type == "cpu":
            x = a.view(1, n, n, 1).contiguous(memory_format=torch.channels_last)  # (1, K=n, M=n, 1)
            w = b.view(n, n, 1, 1)                                               # (N=n, K=n, 1, 1)
            calls.append(lambda: torch.nn.functional.conv2d(x, w))
        saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = saved or tf32
        try:
            with torch.no_grad():
                best_ms = min(measure(fn, device, warmup=2, min_reps=5, min_time_s=0.3).p20 for fn in calls)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved
        _CEILINGS[key] = 2 * n**3 / (best_ms * 1e-3) / 1e12
    return _CEILINGS[key]


# Special-function (exp2) throughput of an H100/H200, published (performance.md §2, from the
# FlashAttention-3 paper): a torch.exp measured on the GPU is memory-bound, far below it.
GPU_EXP_PER_S = 3.9e12


def exp_rate(device: torch.device) -> float:
    """exps per second: on CUDA the published GPU_EXP_PER_S; on CPU torch.exp over a buffer that
    stays in the L2 caches (256 KiB: both threads' halves fit), measured once per run."""
    if device.type == "cuda":
        return GPU_EXP_PER_S
    key = ("exp", str(device))
    if key not in _CEILINGS:
        x = torch.rand(65536, device=device)
        out = torch.empty_like(x)
        reps = 32

        def call():
            for _ in range(reps):
                torch.exp(x, out=out)
        _CEILINGS[key] = reps * x.numel() / (measure(call, device, warmup=2, min_reps=5, min_time_s=0.2).p20 * 1e-3)
    return _CEILINGS[key]


def floor(bytes_moved: float = 0.0, flops: float = 0.0, device: Optional[torch.device] = None,
          dtype: torch.dtype = torch.float32, exps: float = 0.0, tf32x3: bool = False) -> Tuple[float, str]:
    """performance.md §2 floor: (max(bytes / copy bandwidth, FLOPs / GEMM rate of `dtype`, exps /
    exp rate) in microseconds, binding term), the ceilings measured on this device in this run
    (the exp rate on GPU is the published one, exp_rate()). The fourth term of §2, launches, is
    left out: the cases time one call of fused work.

    bytes_moved: inputs read and outputs written once; flops: nominal FLOPs; exps: the exponentials
    any implementation must evaluate. tf32x3 (CUDA, fp32): the FLOPs run as three TF32
    tensor-core products each (Triton's input_precision="tf32x3", skelfast's fp32 loss kernels),
    so the rate is a third of the measured TF32 rate (term "compute, tf32x3"). The bandwidth is
    that of the large copy (DRAM/HBM, term "memory"), or that of a copy moving the same bytes when
    this is faster (term "memory, cache-warm"): a working set that fits in a cache stays there
    across the repeated calls of a benchmark, and would otherwise run above 100% of its floor."""
    device = device or torch.device("cpu")
    t_mem, mem_term = 0.0, "memory"
    if bytes_moved:
        bw = copy_bandwidth_gbs(device)
        if bytes_moved < 2 * default_copy_mib(device) * 2**20:
            same_size = copy_bandwidth_gbs(device, round(bytes_moved / 2 / 2**20, 3))
            if same_size > bw:
                bw, mem_term = same_size, "memory, cache-warm"
        t_mem = bytes_moved / (bw * 1e9)
    tf32x3 = tf32x3 and device.type == "cuda" and dtype == torch.float32
    rate = gemm_tflops(device, dtype, tf32=True) / 3 if tf32x3 else gemm_tflops(device, dtype)
    t_flop = flops / (rate * 1e12) if flops else 0.0
    t_exp = exps / exp_rate(device) if exps else 0.0
    t, term = max((t_mem, mem_term), (t_flop, "compute, tf32x3" if tf32x3 else "compute"), (t_exp, "exp"),
                  key=lambda tt: tt[0])
    return t * 1e6, term


def floor_us(bytes_moved: float = 0.0, flops: float = 0.0, device: Optional[torch.device] = None,
             dtype: torch.dtype = torch.float32) -> float:
    """The floor of `floor()` in microseconds, without its binding term."""
    return floor(bytes_moved, flops, device, dtype)[0]


def ceilings_line(device: torch.device, dtypes: Sequence[torch.dtype] = (torch.float32,), exps: bool = False,
                  tf32: bool = False) -> str:
    """One line naming this run's ceilings (printed by every benchmark that uses them); exps / tf32:
    also the exp rate and (CUDA) the TF32 GEMM rate, for floors that use them."""
    gemm = ", ".join(f"{str(d)[6:]} GEMM {gemm_tflops(device, d) * 1e3:.1f} GFLOP/s" for d in dtypes)
    if tf32 and device.type == "cuda":
        gemm += f", tf32 GEMM {gemm_tflops(device, torch.float32, tf32=True) * 1e3:.1f} GFLOP/s"
    if exps:
        gemm += f", exp {exp_rate(device) / 1e9:.1f} G/s" + (" (published)" if device.type == "cuda" else "")
    return (f"ceilings measured in this run on {device_name(device)}: copy {copy_bandwidth_gbs(device):.1f} GB/s "
            f"(read+write, {default_copy_mib(device)} MiB), {gemm}; CPU allocator {CPU_ALLOCATOR}"
            + (f"; CUDA fp32 {fp32_precision_summary()}" if device.type == "cuda" else ""))


def timed_row(op: str, device: torch.device, provider: str, mode: str, shape: str, dtype: str, stats: Stats,
              peak_mb: Optional[float] = None, reference_ms: Optional[float] = None,
              compile_ms: Optional[float] = None, bytes_moved: Optional[float] = None, flops: Optional[float] = None,
              floor_dtype: torch.dtype = torch.float32, floor_bound: Optional[str] = None,
              throughput: Optional[Tuple[float, str]] = None, exps: Optional[float] = None,
              tf32x3: bool = False, **extra) -> Dict[str, object]:
    """One CSV row of a timed case.

    reference_ms / compile_ms: medians of the eager reference and of its torch.compile provider,
    measured in the same run (speed-up columns; left empty when that provider did not run).
    bytes_moved / flops: the case's minimal traffic (inputs read, outputs written once) and nominal
    FLOPs: give the achieved GB/s and TFLOP/s columns and the §2 floor (floor(), with floor_dtype's
    GEMM rate, and `exps` / `tf32x3` passed on); floor_bound overrides the name of the binding term
    (a labelled floor).
    throughput: (value, unit) of the case's natural rate; default the achieved GB/s, else TFLOP/s.
    extra: further columns (printed tables show them; the CSV keeps VALUE_FIELDS only); a skelfast
    provider's `backend` defaults to skelfast_backend(device) at the time of the call.
    """
    row = base_row(op, device)
    row.update(provider=provider, mode=mode, shape=shape, dtype=dtype, p50_ms=stats.p50, p20_ms=stats.p20,
               p80_ms=stats.p80, peak_mem_mb="" if peak_mb is None else round(peak_mb, 2))
    if provider.startswith("skelfast"):
        row["backend"] = skelfast_backend(device)
    seconds = stats.p50 * 1e-3
    if reference_ms:
        row["speedup_vs_reference"] = reference_ms / stats.p50
    if compile_ms:
        row["speedup_vs_compile"] = compile_ms / stats.p50
    if bytes_moved:
        row["gbs"] = bytes_moved / seconds / 1e9
    if flops:
        row["tflops"] = flops / seconds / 1e12
    if bytes_moved or flops:
        floor_val, bound = floor(bytes_moved or 0.0, flops or 0.0, device, floor_dtype, exps or 0.0, tf32x3)
        row.update(floor_us=round(floor_val, 3), floor_bound=floor_bound or bound,
                   pct_of_floor=100 * floor_val / (stats.p50 * 1e3))
    if throughput is not None:
        row["throughput"], row["throughput_unit"] = throughput
    elif bytes_moved:
        row["throughput"], row["throughput_unit"] = row["gbs"], "GB/s"
    elif flops:
        row["throughput"], row["throughput_unit"] = row["tflops"], "TFLOP/s"
    row.update(extra)
    return row


def _same_count(name: str, got, want) -> None:
    """zip would stop at the shorter list: a provider returning fewer outputs must not pass."""
    n_want = len(want) if isinstance(want, (tuple, list)) else 1
    if len(got) != n_want:
        raise AssertionError(f"provider {name!r} returned {len(got)} outputs, the reference {n_want}")


def check_close(name: str, got, want, atol: float, rtol: float) -> None:
    """Raise if a provider's output differs from the reference (no number for a wrong kernel)."""
    if isinstance(got, (tuple, list)):
        _same_count(name, got, want)
        for g, w in zip(got, want):
            check_close(name, g, w, atol, rtol)
        return
    try:
        torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol)
    except AssertionError as exc:
        raise AssertionError(f"provider {name!r} disagrees with the reference: {exc}") from None


def check_rel_l2(name: str, got, want, tol: float) -> List[float]:
    """Relative L2 error of each output vs the reference below `tol` (a stated tolerance: for bf16
    paths, where element-wise checks are meaningless, and for scalar losses); returns the errors."""
    if not isinstance(got, (tuple, list)):
        got, want = [got], [want]
    _same_count(name, got, want)
    errors = []
    for g, w in zip(got, want):
        w = w.detach().double()
        rel = ((g.detach().double() - w).norm() / w.norm().clamp_min(1e-30)).item()
        if not rel < tol:
            raise AssertionError(f"provider {name!r} disagrees with the reference: relative L2 error {rel:.3g} "
                                 f">= {tol} (no number for a wrong result)")
        errors.append(rel)
    return errors


def check_rel_l2_floored(name: str, got: Sequence[torch.Tensor], want: Sequence[torch.Tensor], tol: float,
                         labels: Optional[Sequence[str]] = None, what: str = "gradient") -> float:
    """Each tensor's L2 error relative to its own norm, floored at 1% of a typical tensor's norm,
    below `tol` (for a list of gradients or parameter updates); returns the largest error. The
    floor: a conv bias feeding a batch-statistics BN has an exactly zero gradient, so its fp32
    value is pure rounding noise that no relative test can pass."""
    _same_count(name, got, want)
    if not want:
        return 0.0
    norms = torch.stack([w.detach().double().norm() for w in want])
    floor = 1e-2 * norms.norm() / len(want) ** 0.5
    worst = 0.0
    for i, (g, w) in enumerate(zip(got, want)):
        rel = ((g.detach().double() - w.detach().double()).norm() / torch.maximum(norms[i], floor)).item()
        if not rel < tol:
            label = labels[i] if labels is not None else str(i)
            raise AssertionError(f"provider {name!r} disagrees with the reference: {what} {label} relative L2 "
                                 f"error {rel:.3g} >= {tol} (no number for a wrong result)")
        worst = max(worst, rel)
    return worst


# argparse `type=` checks: a bad value is an argparse error naming the option (it was a traceback
# from deep inside a benchmark, or a silently different run).
def device_arg(text: str) -> str:
    """A device this machine has: 'cpu', 'cuda' or 'cuda:N'."""
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: the benchmarks run on cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: torch.cuda.is_available() is False on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    return text


def _int_at_least(text: str, low: int) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
    return v


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def positive_ints(text: str) -> List[int]:
    """'64,128' -> [64, 128]; empty items and values < 1 are errors."""
    return [positive_int(t) for t in _items(text)]


def names_from(choices: Sequence[str]) -> Callable[[str], List[str]]:
    """An argparse type for a comma list of names from `choices`."""
    def parse(text: str) -> List[str]:
        names = _items(text)
        bad = [n for n in names if n not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices)}")
        return names
    return parse


def _items(text: str) -> List[str]:
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list with no empty items")
    return items


def bench_parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """Command line with the options every benchmark has: --quick (its smoke-test size, described
    by `quick_help`), --device and --out-dir."""
    parser = _BenchParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out-dir", default=None,
                        help="CSV folder (default benchmarks/results; with --quick benchmarks/results/_scratch)")
    return parser


def default_out_dir(quick: bool) -> str:
    return SCRATCH_DIR if quick else RESULTS_DIR


class _BenchParser(argparse.ArgumentParser):
    """Fills in --out-dir from --quick after parsing (the default depends on another option)."""

    def parse_args(self, args=None, namespace=None):
        ns = super().parse_args(args, namespace)
        if getattr(ns, "out_dir", None) is None:
            ns.out_dir = default_out_dir(getattr(ns, "quick", False))
        ns.out_dir = os.path.abspath(ns.out_dir)
        return ns


def device_name(device: torch.device) -> str:
    """GPU model, or for CPUs cores, architecture and the vector ISA ATen dispatches to: hosts of one
    kind with and without AVX-512 differ ~3x in fp32 GEMM rate, so their rows must not share a file."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{os.cpu_count()}core-{platform.machine()}-{torch.backends.cpu.get_cpu_capability().lower()}"


def device_slug(device: torch.device) -> str:
    name = device_name(device).lower()
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


@functools.lru_cache(maxsize=None)
def git_sha() -> str:
    """HEAD's short sha when the process started measuring, with '-dirty' when tracked files differ
    from it (rows of uncommitted code must not pass for that commit's); once per process, so that
    one benchmark's rows name one commit even if HEAD moves while it runs."""
    cwd = os.path.dirname(RESULTS_DIR)
    try:
        sha = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, text=True,
                                      stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=cwd,
                               stderr=subprocess.DEVNULL).returncode == 1
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def skelfast_backend(device: torch.device) -> str:
    """What skelfast ops run on for `device` under the selected backend, e.g. 'auto:compiled'
    (skelfast._C's kernels; on CUDA, ops without a CUDA kernel run the Triton launchers registered
    on their CUDA key), 'triton:triton', or 'auto:torch' (the eager reference: no kernel was
    available, so a skelfast row measured the reference). Call it inside the provider's backend."""
    from skelfast.ops import _backend

    return f"{_backend.get_backend()}:{_backend.resolve(device)}"


def base_row(op: str, device: torch.device) -> Dict[str, str]:
    import skelfast

    return {"op": op, "device_name": device_name(device), "torch_version": torch.__version__,
            "skelfast_version": skelfast.__version__, "git_sha": git_sha(),
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "run_id": RUN_ID}


def results_path(device: torch.device, out_dir: Optional[str] = None) -> str:
    return os.path.join(out_dir or RESULTS_DIR, f"{device_slug(device)}.csv")


def write_rows(rows: Iterable[Dict[str, object]], name: str, device: torch.device, out_dir: Optional[str] = None) -> str:
    """Upsert rows (keyed by CASE_FIELDS) into <out_dir>/<device_slug>.csv; returns the path.

    `name` (the benchmark) is kept for messages; every benchmark of a device shares one CSV."""
    path = results_path(device, out_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fields = KEY_FIELDS + VALUE_FIELDS
    existing: Dict[tuple, Dict[str, object]] = {}
    if os.path.exists(path):
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                existing[tuple(row.get(k, "") for k in CASE_FIELDS)] = row
    for row in rows:
        existing[tuple(str(row.get(k, "")) for k in CASE_FIELDS)] = row
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in existing.values():
            writer.writerow(row)
    os.replace(tmp, path)
    return path


def print_table(rows: List[Dict[str, object]], columns: List[str]) -> None:
    if not rows:
        print("(no rows)")
        return
    widths = {c: max(len(c), *(len(_fmt(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c, "")).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
