"""Keep freed CPU tensor memory in the process instead of handing it back to the kernel (glibc).

Why: PyTorch's CPU allocator is plain `malloc`. glibc serves blocks above its mmap threshold (128
KiB, raised dynamically up to 32 MiB) with a fresh `mmap` and returns them with `munmap` on free,
and trims the top of the heap beyond 128 KiB of free space. A training step allocates and frees
tens of activation-sized blocks (2-64 MiB here), so every step re-faults every one of them page by
page: the kernel zero-fills each 4 KiB page on first touch. Measured on the 2-core CPU box, phase-1
step of the benchmark (N=16, K=32768): 2135 -> 1664 ms for the skelfast backend, 3292 -> 3081 ms
for the eager reference; the first op to touch a fresh buffer took the blame in profiles (BN
forward 5-10 ms per call where the op itself needs 1.6 ms).

`tune_cpu_allocator()` sets M_MMAP_THRESHOLD to its largest value (2**31-1) and switches trimming
off (M_TRIM_THRESHOLD = -1) through `mallopt`, so freed blocks go back to malloc's free lists and
the next step reuses them without a fault. (A trim threshold of 2**31-1 is not enough: the batched
encoders at N=64 free more than 2 GiB at the heap top, and glibc returned it every step: 600k page
faults per forward+backward, 6.6-8.9 s instead of 5.0-5.3 s.)

Cost: the resident set stays at the process's peak plus fragmentation (a loop allocating and
freeing one 64 MiB tensor grew the heap by 7 such blocks before it reused them; the benchmark's
training process ended at 2.83 GB resident against a 2.59 GB peak untuned; the six batched
encoders' fwd+bwd at N=64, 3962 MiB peak of live tensors, settle at 8.2 GB resident after three
calls, and then take 4.7-5.0 s per call against 13-15 s untuned, where every call faults 3.3M
pages in: measured 2026-11-22), and a process that
runs workloads of different shapes one after another keeps all of it: `release_free_memory()`
(malloc_trim) hands the free memory back, and the trainer calls it at the start of every command,
the benchmarks before every provider they time. The library itself never calls these;
`python -m skelfast.train` (config key `run.tune_cpu_allocator`) and the benchmarks (for every
provider alike) do. `SKELFAST_CPU_ALLOCATOR=default` turns it off
everywhere. Other C libraries (musl, macOS, Windows) are left alone and the call returns False.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import platform
from typing import Iterator

__all__ = ["tune_cpu_allocator", "cpu_allocator_tuned", "release_free_memory", "rss_tracks_live_memory"]

_M_TRIM_THRESHOLD = -1      # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3
_LARGEST = 2**31 - 1        # mallopt takes an int: the largest mmap threshold it can express
_NO_TRIM = -1               # mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming completely"
_SMALL = 128 * 1024         # glibc's initial thresholds
_HALF_HEAP = 32 * 1024 * 1024   # older glibc refuses an mmap threshold above HEAP_MAX_SIZE / 2 (64-bit)
_tuned = False


@functools.lru_cache(maxsize=None)   # find_library runs ldconfig (~2 ms): once per process
def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def _set_thresholds(libc, mmap_threshold: int, trim_threshold: int) -> bool:
    # mmap threshold first: setting either parameter switches off glibc's dynamic adjustment, and
    # a lone trim setting would leave every block above 128 KiB on mmap (measured 1.6x slower).
    ok = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(mmap_threshold)) == 1
    if not ok and mmap_threshold > _HALF_HEAP:   # e.g. glibc 2.26: blocks above 32 MiB stay on mmap
        ok = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(_HALF_HEAP)) == 1
    return ok and libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(trim_threshold)) == 1


def cpu_allocator_tuned() -> bool:
    """Whether tune_cpu_allocator() has applied the settings in this process."""
    return _tuned


def tune_cpu_allocator() -> bool:
    """Apply the glibc settings above to this process (idempotent). Returns True when they are in
    effect, False where they do not apply (not glibc) or SKELFAST_CPU_ALLOCATOR=default."""
    global _tuned
    if _tuned:
        return True
    choice = os.environ.get("SKELFAST_CPU_ALLOCATOR", "tuned").strip().lower()
    if choice not in ("tuned", "default"):
        raise ValueError(f"SKELFAST_CPU_ALLOCATOR must be 'tuned' or 'default', got {choice!r}")
    libc = _glibc() if choice == "tuned" else None
    _tuned = libc is not None and _set_thresholds(libc, _LARGEST, _NO_TRIM)
    return _tuned


def release_free_memory() -> bool:
    """Give the free memory malloc keeps back to the OS now (glibc `malloc_trim(0)`: the heap top
    and every whole free page inside it). With trimming off, a process that runs several workloads
    of different shapes one after another keeps each one's peak and the fragmentation between them
    (a benchmark process timing the N=128 encoders after the N=64 ones grew to 24 GB resident and
    was OOM-killed); calling this between workloads (each training command, each benchmark
    provider) keeps the resident set at the current workload's own peak. Returns False where this
    is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(ctypes.c_size_t(0))
    return True


@contextlib.contextmanager
def rss_tracks_live_memory() -> Iterator[bool]:
    """On entry the free heap memory kept so far is given back to the OS (malloc_trim), and inside
    the block new large blocks are their own mmaps, returned on free: the process's resident set
    then follows live memory, so a peak-RSS measurement of one call sees that call's own peak
    rather than memory kept from earlier calls. (Free heap chunks that survive the trim can still
    serve allocations; their pages fault in again and count.) On exit a
    tuned process is tuned again (an untuned one keeps glibc's initial fixed thresholds). Yields
    False where this is not glibc."""
    libc = _glibc()
    if libc is None:
        yield False
        return
    _set_thresholds(libc, _SMALL, _SMALL)
    libc.malloc_trim(ctypes.c_size_t(0))
    try:
        yield True
    finally:
        if _tuned:
            _set_thresholds(libc, _LARGEST, _NO_TRIM)
