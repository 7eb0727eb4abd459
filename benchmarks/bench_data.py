"""Benchmark of the data pipeline (method.md §1-§2, §9.6).

1. `.skeleton` reader throughput (files/s) on synthetic NTU-format files, in-process and over a
   process pool; plus the full prepare path (read + §1.3 preprocessing) per file.
2. Augmentation of a batch of 128 samples x 2 views (temporal crop + shear, §2): the CPU
   per-sample NumPy path a DataLoader worker runs vs the batched torch op
   (`skelfast.data.augment.batched_two_views`) on CPU, and on CUDA when available.

Timings are median / p20 / p80 over repeats (time.perf_counter; CUDA events on GPU, via
benchmarks/_harness.py). Rows (ops `data_reader`, `augment_2views`) are upserted into the
shared per-device CSV of the harness, benchmarks/results/<device_slug>.csv.

Usage: python -m benchmarks.bench_data [--quick] [--files N] [--device cpu|cuda] [--out-dir DIR] [--no-write]
       (or python benchmarks/bench_data.py ...). --quick finishes in well under 30 s.
"""
from __future__ import annotations

import argparse
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


def bench_reader(n_files: int, workers: int, reps: int, device: torch.device):
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        classes = 10
        paths = synthetic.generate(tmp, num_classes=classes, samples_per_class=max(1, n_files // classes), seed=0,
                                   workers=workers)
        mb = sum(os.path.getsize(p) for p in paths) / 2**20
        cases = [("read", "numpy-inproc", lambda: read_skeletons(paths, workers=0)),
                 ("read", f"numpy-{workers}proc", lambda: read_skeletons(paths, workers=workers)),
                 ("read+preprocess", f"numpy-{workers}proc",
                  lambda: list(parallel_map(_process_file, paths, workers=workers)))]
        for mode, provider, fn in cases:
            s = H.measure(fn, torch.device("cpu"), warmup=1, min_reps=reps, min_time_s=0.0, max_reps=reps)
            row = H.base_row("data_reader", device)
            row.update(provider=provider, mode=mode, shape=f"files={len(paths)} ({mb:.0f} MiB)", dtype="float64",
                       p50_ms=s.p50, p20_ms=s.p20, p80_ms=s.p80, throughput=len(paths) / (s.p50 * 1e-3),
                       throughput_unit="files/s")
            rows.append(row)
    return rows


def _one_thread(fn, *args):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(n)


def bench_augment(reps: int, device: torch.device):
    rows = []
    x_np = np.random.default_rng(0).normal(size=(B, C, T, V, M)).astype(np.float32)

    def per_sample():   # what a DataLoader worker does for Feeder_dual (two independent views)
        rng = np.random.default_rng(0)
        v = [[augment_sample(x_np[i], rng) for i in range(B)] for _ in range(2)]
        return torch.from_numpy(np.stack(v[0])), torch.from_numpy(np.stack(v[1]))

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    cases = [("cpu_per_sample_numpy", torch.device("cpu"), per_sample)]
    for d in devices:
        x = torch.from_numpy(x_np).to(d)
        g = torch.Generator(device=d).manual_seed(0)
        cases.append((f"batched_{d.type}", d, lambda x=x, g=g: batched_two_views(x, g)))
        if d.type == "cpu":   # the per-sample path is single-threaded too: compare like with like
            cases.append(("batched_cpu_1thread", d, lambda x=x, g=g: _one_thread(batched_two_views, x, g)))
    base = None
    for provider, d, fn in cases:
        s = H.measure(fn, d, warmup=2, min_reps=reps, min_time_s=0.2)
        base = base or s.p50
        row = H.base_row("augment_2views", device if d.type == "cuda" else torch.device("cpu"))
        row.update(provider=provider, mode="forward", shape=f"{B}x2x{C}x{T}x{V}x{M}", dtype="float32",
                   p50_ms=s.p50, p20_ms=s.p20, p80_ms=s.p80, speedup_vs_reference=base / s.p50,
                   throughput=B / (s.p50 * 1e-3), throughput_unit="samples/s")
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats (< 30 s)")
    ap.add_argument("--files", type=int, default=None, help="synthetic files for the reader benchmark")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-write", action="store_true", help="print only, do not write the CSV")
    ap.add_argument("--out-dir", default=None, help="CSV folder (default benchmarks/results)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    n_files = args.files or (40 if args.quick else 300)
    reps = 3 if args.quick else 7
    rows = bench_reader(n_files, args.workers, reps, device) + bench_augment(reps if args.quick else 20, device)
    H.print_table(rows, ["op", "provider", "mode", "shape", "p50_ms", "p20_ms", "p80_ms", "throughput",
                         "throughput_unit", "speedup_vs_reference"])
    if not args.no_write:
        print("wrote", H.write_rows(rows, "data", device, out_dir=args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
