"""Benchmark of the data pipeline (method.md §1-§2, §9.6).

1. `.skeleton` reader on synthetic NTU-format files, `read` and the full prepare path
   `read+preprocess` (read + §1.3 preprocessing) per file; providers `numpy-inproc` (the reference:
   one process) and `numpy-<W>proc` (a process pool). throughput = MiB/s of .skeleton text parsed
   (files/s is printed too); gbs = (text read + arrays returned) per second. No roofline applies: the
   reader is bound by text parsing (tokenising and converting decimal numbers), not by memory traffic
   or FLOPs, so floor_us / pct_of_floor are against the copy bandwidth for those bytes, labelled
   floor_bound = "copy-bw, parse-bound": a lower bound no parser reaches, kept to show how far the
   reader is from memory speed. There is no torch.compile provider (no tensor program to compile).
2. Augmentation of a batch of 128 samples x 2 views (temporal crop + shear, §2): the CPU
   per-sample NumPy path a DataLoader worker runs (`cpu_per_sample_numpy`, the reference) vs the
   batched torch op (`skelfast.data.augment.batched_two_views`) on CPU (also on one thread, like
   the per-sample path), on CUDA when available, and its torch.compile (`batched_<dev>+compile`,
   the compile baseline of each device; the generator's random draws stay eager behind a graph
   break, so its output equals the eager op's bit for bit, which is checked; compiling costs about
   5 s with a cold inductor cache on the 2-core CPU box). throughput = samples/s; gbs and
   pct_of_floor are for the minimal traffic (the batch read once, both views written once) at the
   copy bandwidth measured in the same run.

Timings are median / p20 / p80 over repeats (time.perf_counter; CUDA events on GPU, via
benchmarks/_harness.py). Rows (ops `data_reader`, `augment_2views`) are upserted into the
shared per-device CSV of the harness, benchmarks/results/<device_slug>.csv.

Usage: python -m benchmarks.bench_data [--quick] [--files N] [--device cpu|cuda] [--out-dir DIR] [--no-write]
       (or python benchmarks/bench_data.py ...). --quick finishes in well under 30 s.
"""
from __future__ import annotations

import os
import sys
import tempfile

import numpy as np
import torch

if __package__ in (None, ""):   # run as a script: make `benchmarks` and `skelfast` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import _harness as H
else:
    from . import _harness as H

from skelfast.data.augment import augment_sample, batched_two_views
from skelfast.data.preparation import _process_file
from skelfast.data.skeleton_reader import read_skeletons
from skelfast.data import synthetic
from skelfast.data.skeleton_reader import parallel_map

B, C, T, V, M = 128, 3, 50, 25, 2


def _nbytes(obj) -> int:
    """Bytes of the arrays/tensors in a (nested) result."""
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(o) for o in obj)
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    return 0


def bench_reader(n_files: int, workers: int, reps: int):
    rows = []
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        classes = 10
        paths = synthetic.generate(tmp, num_classes=classes, samples_per_class=-(-n_files // classes), seed=0,
                                   workers=workers)
        text_bytes = sum(os.path.getsize(p) for p in paths)
        shape = f"files={len(paths)} ({text_bytes / 2**20:.0f} MiB)"
        modes = {"read": lambda w: read_skeletons(paths, workers=w),
                 "read+preprocess": lambda w: list(parallel_map(_process_file, paths, workers=w))}
        for mode, run in modes.items():
            out_bytes = _nbytes(run(0))
            stats = {}
            for provider, w in (("numpy-inproc", 0), (f"numpy-{workers}proc", workers)):
                stats[provider] = H.measure(lambda w=w: run(w), cpu, warmup=1, min_reps=reps, min_time_s=0.0,
                                            max_reps=reps)
            for provider, s in stats.items():
                seconds = s.p50 * 1e-3
                rows.append(H.timed_row(   # on `cpu` whatever --device: the reader runs on the CPU
                    "data_reader", cpu, provider, mode, shape, "float64", s, reference_ms=stats["numpy-inproc"].p50,
                    bytes_moved=text_bytes + out_bytes, floor_bound="copy-bw, parse-bound",
                    throughput=(text_bytes / 2**20 / seconds, "MiB/s text"), files_per_s=len(paths) / seconds))
    return rows


def _one_thread(fn, *args):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(n)


def bench_augment(reps: int, device: torch.device):
    x_np = np.random.default_rng(0).normal(size=(B, C, T, V, M)).astype(np.float32)
    bytes_moved = 3 * x_np.nbytes   # read the batch once, write two views once

    def per_sample():   # what a DataLoader worker does for Feeder_dual (two independent views)
        rng = np.random.default_rng(0)
        v = [[augment_sample(x_np[i], rng) for i in range(B)] for _ in range(2)]
        return torch.from_numpy(np.stack(v[0])), torch.from_numpy(np.stack(v[1]))

    # the batched op on the CPU, and on --device when that is a GPU (not on any GPU the machine has)
    devices = [torch.device("cpu")] + ([device] if device.type == "cuda" else [])
    cases = [("cpu_per_sample_numpy", torch.device("cpu"), per_sample)]
    compiled_two_views = H.compile_static(batched_two_views)
    for d in devices:
        x = torch.from_numpy(x_np).to(d)
        g = torch.Generator(device=d).manual_seed(0)
        cases.append((f"batched_{d.type}", d, lambda x=x, g=g: batched_two_views(x, g)))
        if d.type == "cpu":   # the per-sample path is single-threaded too: compare like with like
            cases.append(("batched_cpu_1thread", d, lambda x=x, g=g: _one_thread(batched_two_views, x, g)))
        # the compiled op must give the eager op's views for the same seed before it is timed
        H.check_close(f"batched_{d.type}+compile", compiled_two_views(x, torch.Generator(device=d).manual_seed(1)),
                      batched_two_views(x, torch.Generator(device=d).manual_seed(1)), atol=1e-6, rtol=1e-6)
        gc_ = torch.Generator(device=d).manual_seed(0)
        cases.append((f"batched_{d.type}+compile", d, lambda x=x, g=gc_: compiled_two_views(x, g)))
    stats = {provider: (d, H.measure(fn, d, warmup=2, min_reps=reps, min_time_s=0.2)) for provider, d, fn in cases}
    base = stats["cpu_per_sample_numpy"][1].p50
    rows = []
    for provider, (d, s) in stats.items():
        comp = stats.get(f"batched_{d.type}+compile", (None, None))[1]
        rows.append(H.timed_row("augment_2views", d, provider, "forward", f"{B}x2x{C}x{T}x{V}x{M}", "float32", s,
                                reference_ms=base, compile_ms=comp and comp.p50, bytes_moved=bytes_moved,
                                throughput=(B / (s.p50 * 1e-3), "samples/s")))
    return rows


def main(argv=None) -> int:
    ap = H.bench_parser(__doc__, "small sizes, few repeats (< 30 s)")
    ap.add_argument("--files", type=H.positive_int, default=None,
                    help="synthetic files for the reader benchmark, rounded up to whole classes of 10 "
                         "(default 300; --quick 40)")
    ap.add_argument("--workers", type=H.non_negative_int, default=os.cpu_count() or 1,
                    help="reader processes (0: none)")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write the CSV")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    n_files = args.files or (40 if args.quick else 300)
    reps = 3 if args.quick else 7
    rows = bench_reader(n_files, args.workers, reps) + bench_augment(reps if args.quick else 20, device)
    print(H.ceilings_line(device))
    H.print_table(rows, ["op", "provider", "mode", "shape", "p50_ms", "p20_ms", "p80_ms", "throughput",
                         "throughput_unit", "files_per_s", "gbs", "speedup_vs_reference", "speedup_vs_compile",
                         "pct_of_floor", "floor_bound"])
    if not args.no_write:
        # each row into its own device's CSV: the reader and CPU rows are CPU measurements, whatever
        # --device is (they used to land in the GPU's file)
        for d in {torch.device("cpu"), device}:
            mine = [r for r in rows if r["device_name"] == H.device_name(d)]
            if mine:
                print("wrote", H.write_rows(mine, "data", d, out_dir=args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
