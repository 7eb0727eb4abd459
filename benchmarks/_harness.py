"""Shared benchmark harness (engineering.md §8, performance.md §7).

- measure(fn): warm-up, device sync, repeated timing; median with p20/p80 in milliseconds.
- peak_memory(fn): peak bytes allocated during one call (CUDA allocator stats on GPU, a
  tracemalloc-free CPU estimate through torch's CPU profiler memory events otherwise).
- check_close(got, want): every provider's output is checked against the reference before it is
  timed, so a fast wrong kernel never gets a number.
- write_rows(rows, name, device): upsert into benchmarks/results/<device_slug>.csv, one CSV per
  device for every benchmark (rows are keyed by op, provider, mode, shape, dtype and versions).
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional

import torch

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
KEY_FIELDS = ["op", "provider", "mode", "shape", "dtype", "device_name", "torch_version", "skelfast_version", "git_sha"]
VALUE_FIELDS = ["p50_ms", "p20_ms", "p80_ms", "peak_mem_mb", "speedup_vs_reference", "speedup_vs_compile",
                "throughput", "throughput_unit", "pct_of_floor", "floor_us", "timestamp"]


@dataclass
class Stats:
    p50: float
    p20: float
    p80: float
    n: int


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], device: torch.device, warmup: int = 3, min_reps: int = 10,
            min_time_s: float = 0.5, max_reps: int = 1000) -> Stats:
    """Median/p20/p80 wall time of fn() in ms, synchronising the device around every call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_time_s):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    # inclusive: interpolate within the samples (the default extrapolates, e.g. negative p20 at n=2)
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) >= 2 else times * 9
    return Stats(p50=statistics.median(times), p20=q[1], p80=q[7], n=len(times))


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory allocated while fn() runs, in MiB, above what was allocated before.

    CUDA: torch.cuda.max_memory_allocated. CPU: the profiler's memory events (allocations made by
    torch's CPU allocator), integrated in time order.
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
    # Each allocation/free is attributed to the op that made it (self memory; an op's total would
    # count its children again); integrate them in time order for the peak above the start.
    events = [e for e in prof.events() if getattr(e, "self_cpu_memory_usage", 0)]
    events.sort(key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak / 2**20


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


_CEILINGS: Dict[tuple, float] = {}


def copy_bandwidth_gbs(device: torch.device, mbytes: int = 256) -> float:
    """Read+write bandwidth of a large clone (GB/s), measured once per run: the memory roofline."""
    key = ("copy", str(device), mbytes)
    if key not in _CEILINGS:
        x = torch.empty(mbytes * 2**20 // 4, dtype=torch.float32, device=device).normal_()
        stats = measure(lambda: x.clone(), device, warmup=2, min_reps=5, min_time_s=0.3)
        _CEILINGS[key] = 2 * x.numel() * 4 / (stats.p50 * 1e-3) / 1e9
    return _CEILINGS[key]


def gemm_tflops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048) -> float:
    """Dense matmul rate (TFLOP/s) at n x n x n, measured once per run: the compute roofline for
    that dtype on this device (TF32/bf16 tensor cores on GPU follow torch's matmul settings)."""
    key = ("gemm", str(device), dtype, n)
    if key not in _CEILINGS:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        stats = measure(lambda: a @ b, device, warmup=2, min_reps=5, min_time_s=0.3)
        _CEILINGS[key] = 2 * n**3 / (stats.p50 * 1e-3) / 1e12
    return _CEILINGS[key]


def floor_us(bytes_moved: float = 0.0, flops: float = 0.0, device: Optional[torch.device] = None,
             dtype: torch.dtype = torch.float32) -> float:
    """performance.md §2 floor: max(bytes / copy bandwidth, FLOPs / GEMM rate), in microseconds,
    with both ceilings measured on this device in this run."""
    device = device or torch.device("cpu")
    t_mem = bytes_moved / (copy_bandwidth_gbs(device, 64) * 1e9) if bytes_moved else 0.0
    t_flop = flops / (gemm_tflops(device, dtype) * 1e12) if flops else 0.0
    return max(t_mem, t_flop) * 1e6


def timed_row(op: str, device: torch.device, provider: str, mode: str, shape: str, dtype: str, stats: Stats,
              peak_mb: float, reference_ms: Optional[float] = None, compile_ms: Optional[float] = None,
              bytes_moved: Optional[float] = None, floor: Optional[float] = None) -> Dict[str, object]:
    """One CSV row: timing, peak memory, speed-ups over the reference and compile providers and,
    for a memory-bound case, achieved GB/s and % of `floor` (microseconds)."""
    row = base_row(op, device)
    row.update(provider=provider, mode=mode, shape=shape, dtype=dtype, p50_ms=stats.p50, p20_ms=stats.p20,
               p80_ms=stats.p80, peak_mem_mb=round(peak_mb, 2))
    if reference_ms:
        row["speedup_vs_reference"] = reference_ms / stats.p50
    if compile_ms:
        row["speedup_vs_compile"] = compile_ms / stats.p50
    if bytes_moved is not None:
        row.update(throughput=bytes_moved / (stats.p50 * 1e-3) / 1e9, throughput_unit="GB/s")
    if floor is not None:
        row.update(pct_of_floor=100 * floor / (stats.p50 * 1e3), floor_us=round(floor, 2))
    return row


def check_close(name: str, got, want, atol: float, rtol: float) -> None:
    """Raise if a provider's output differs from the reference (no number for a wrong kernel)."""
    if isinstance(got, (tuple, list)):
        for g, w in zip(got, want):
            check_close(name, g, w, atol, rtol)
        return
    try:
        torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol)
    except AssertionError as exc:
        raise AssertionError(f"provider {name!r} disagrees with the reference: {exc}") from None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{os.cpu_count()}core-{platform.machine()}"


def device_slug(device: torch.device) -> str:
    name = device_name(device).lower()
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def git_sha() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=os.path.dirname(RESULTS_DIR),
                                       text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def base_row(op: str, device: torch.device) -> Dict[str, str]:
    import skelfast

    return {"op": op, "device_name": device_name(device), "torch_version": torch.__version__,
            "skelfast_version": skelfast.__version__, "git_sha": git_sha(),
            "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def results_path(device: torch.device, out_dir: Optional[str] = None) -> str:
    return os.path.join(out_dir or RESULTS_DIR, f"{device_slug(device)}.csv")


def write_rows(rows: Iterable[Dict[str, object]], name: str, device: torch.device, out_dir: Optional[str] = None) -> str:
    """Upsert rows (keyed by KEY_FIELDS) into <out_dir>/<device_slug>.csv; returns the path.

    `name` (the benchmark) is kept for messages; every benchmark of a device shares one CSV."""
    path = results_path(device, out_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fields = KEY_FIELDS + VALUE_FIELDS
    existing: Dict[tuple, Dict[str, object]] = {}
    if os.path.exists(path):
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                existing[tuple(row.get(k, "") for k in KEY_FIELDS)] = row
    for row in rows:
        existing[tuple(str(row.get(k, "")) for k in KEY_FIELDS)] = row
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in existing.values():
            writer.writerow(row)
    os.replace(tmp, path)
    return path


def print_table(rows: List[Dict[str, object]], columns: List[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for r in rows:
        print("  ".join(_fmt(r.get(c, "")).ljust(widths[c]) for c in columns))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
