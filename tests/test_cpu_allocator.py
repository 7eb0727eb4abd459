"""skelfast.cpu_allocator: freed CPU tensor memory is reused without page faults once tuned.

Measured through the process's minor page faults (getrusage): touching a fresh 64 MiB tensor faults
~16k pages when glibc hands the block back to the kernel on free (its default for blocks this
large), and next to none when the tuned allocator keeps it. Each case runs in a fresh interpreter,
since the setting is process-wide and irreversible for the test process.
"""
import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the tuning applies to glibc only")

PROBE = r"""
import json, resource, sys, torch
from skelfast import cpu_allocator

def cycle():
    t = torch.empty(16 * 2**20)          # 64 MiB: above glibc's largest dynamic mmap threshold
    t.fill_(1.0)

def faults_of_fresh_block():
    # steady state, as in a training loop: the first cycles may still extend the heap (torch asks
    # for 64-byte aligned blocks, which a freed block of exactly the same size cannot always serve;
    # measured: up to ~8 cycles before the free lists hold a fitting block)
    for _ in range(12):
        cycle()
    counts = []
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        cycle()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return min(counts)

def heap_top_given_back():
    # A step whose activations peak above 2 GiB (the batched encoders at N=64 do) frees more than
    # 2 GiB at the top of the heap; a trim threshold of 2**31-1 (mallopt's largest int) still
    # returned it to the kernel every step. Reserved, not touched: trimming looks at sizes only.
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
    blocks = [libc.malloc(1280 * 2**20) for _ in range(2)]   # below the mmap threshold: heap
    top = libc.sbrk(0)
    for b in reversed(blocks):
        libc.free(b)
    return top - libc.sbrk(0)

mode = sys.argv[1]
if mode == "int_max_trim":   # the thresholds tune_cpu_allocator set before (both 2**31-1)
    assert cpu_allocator._set_thresholds(cpu_allocator._glibc(), 2**31 - 1, 2**31 - 1)
tuned = cpu_allocator.tune_cpu_allocator() if mode not in ("untouched", "int_max_trim") else False
out = {"tuned": tuned, "flag": cpu_allocator.cpu_allocator_tuned(), "faults": faults_of_fresh_block()}
if mode == "release":
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    blocks = [torch.ones(16 * 2**20) for _ in range(8)]     # 512 MiB, touched
    del blocks
    before = rss()
    out["released"] = cpu_allocator.release_free_memory()
    out["rss_drop"] = before - rss()
if mode in ("big", "int_max_trim"):
    out["heap_given_back"] = heap_top_given_back()
if mode == "scoped":
    with cpu_allocator.rss_tracks_live_memory() as applied:
        out["scoped_applied"] = applied
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        cycle()                               # the first block after entry: its pages were given back
        out["scoped_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    out["after_faults"] = faults_of_fresh_block()
    out["flag_after"] = cpu_allocator.cpu_allocator_tuned()
print(json.dumps(out))
"""

PAGES_64MIB = 16 * 2**20 * 4 // 4096


def _probe(mode: str, env_value=None) -> dict:
    env = dict(os.environ, SKELFAST_QUIET_IMPORT="1")
    env.pop("SKELFAST_CPU_ALLOCATOR", None)
    if env_value is not None:
        env["SKELFAST_CPU_ALLOCATOR"] = env_value
    run = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_default_glibc_refaults_every_fresh_block():
    out = _probe("untouched")
    assert out["tuned"] is False and out["flag"] is False
    assert out["faults"] > PAGES_64MIB // 2          # the premise of the module


def test_tuned_allocator_reuses_freed_blocks_without_faults():
    out = _probe("tune")
    assert out["tuned"] is True and out["flag"] is True
    assert out["faults"] < PAGES_64MIB // 20


def test_tuned_allocator_keeps_a_heap_top_larger_than_2gib():
    assert _probe("int_max_trim")["heap_given_back"] > 2 * 2**30   # premise: a 2 GiB threshold trims it
    out = _probe("big")
    assert out["tuned"] is True
    assert out["heap_given_back"] == 0


def test_release_free_memory_gives_kept_blocks_back():
    out = _probe("release")
    assert out["tuned"] is True and out["released"] is True
    assert out["rss_drop"] > 256 * 2**20      # of the 512 MiB freed (and kept) just before


def test_env_default_leaves_glibc_alone():
    out = _probe("tune", env_value="default")
    assert out["tuned"] is False and out["flag"] is False
    assert out["faults"] > PAGES_64MIB // 2


def test_env_bad_value_is_an_error():
    env = dict(os.environ, SKELFAST_QUIET_IMPORT="1", SKELFAST_CPU_ALLOCATOR="fast")
    run = subprocess.run([sys.executable, "-c", "from skelfast import cpu_allocator; cpu_allocator.tune_cpu_allocator()"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode != 0 and "SKELFAST_CPU_ALLOCATOR must be 'tuned' or 'default'" in run.stderr


def test_rss_scope_returns_blocks_then_restores_tuning():
    out = _probe("scoped")
    assert out["tuned"] is True and out["scoped_applied"] is True
    assert out["faults"] < PAGES_64MIB // 20         # tuned before the scope
    assert out["scoped_faults"] > PAGES_64MIB // 2   # inside: kept memory was given back, so it faults again
    assert out["after_faults"] < PAGES_64MIB // 20   # tuned again after it
    assert out["flag_after"] is True


def test_older_glibc_refusing_the_largest_mmap_threshold_gets_half_a_heap():
    """glibc before the heap-size tunables refuses M_MMAP_THRESHOLD above HEAP_MAX_SIZE / 2 (32 MiB
    on 64-bit): the tuning then keeps that threshold and still switches trimming off."""
    from skelfast import cpu_allocator

    class OldGlibc:
        def __init__(self):
            self.set = {}

        def mallopt(self, param, value):
            if param == cpu_allocator._M_MMAP_THRESHOLD and value.value > 32 * 1024 * 1024:
                return 0
            self.set[param] = value.value
            return 1

    libc = OldGlibc()
    assert cpu_allocator._set_thresholds(libc, cpu_allocator._LARGEST, cpu_allocator._NO_TRIM)
    assert libc.set == {cpu_allocator._M_MMAP_THRESHOLD: 32 * 1024 * 1024, cpu_allocator._M_TRIM_THRESHOLD: -1}
