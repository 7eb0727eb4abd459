"""`python -m skelfast.data`: prepare NTU RGB+D / synthetic data, verify a prepared folder, synthesise.

Commands:
  prepare --dataset ntu60|ntu120|synthetic --benchmark xsub|xview|xset --raw DIR --out DIR
          [--workers N] [--chunk-size N] [--force] [--no-progress]
      Read every `.skeleton` file in DIR (method.md §1.1), drop the published missing-skeleton
      samples (ntu60/ntu120), split by the benchmark rule (§1.2), preprocess to 50 frames (§1.3)
      and write the memory-mappable folder documented in `skelfast.data.preparation`. Resumable;
      manifest.json is written last. Published benchmarks: ntu60 xsub/xview, ntu120 xsub/xset;
      synthetic allows all three.
  prepare --verify --out DIR [--raw DIR]
      Re-check a prepared folder (checksums, shapes, label/data counts); with --raw, also that it
      is up to date with that folder's .skeleton files (none added, removed or changed since).
  synth --out DIR [--num-classes 10] [--samples-per-class 30] [--seed 0] [--noise 1.0]
      Write a synthetic NTU-format dataset as `.skeleton` files (skelfast.data.synthetic); prepare it
      with `prepare --dataset synthetic --raw DIR ...`.
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures.process import BrokenProcessPool

from . import BENCHMARKS, DATASETS


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m skelfast.data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="raw .skeleton folder -> prepared arrays (or --verify one)")
    # default None: --verify checks them against the folder only when they are given
    p.add_argument("--dataset", choices=sorted(DATASETS), default=None,
                   help="which samples and missing-skeleton list (default ntu60; with --verify: check the "
                        "folder holds this dataset)")
    p.add_argument("--benchmark", choices=list(BENCHMARKS) + ["xsetup"], default=None,
                   help="train/val split (default xsub; with --verify: check the folder's)")
    p.add_argument("--raw", help="folder of .skeleton files (with --verify: also check that --out is up to "
                                 "date with it)")
    p.add_argument("--out", required=True, help="output folder (created; with --verify: the folder to check)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help=f"processes (0: none; default {os.cpu_count() or 1}, the CPU count)")
    p.add_argument("--chunk-size", type=int, default=256, help="samples per resumable chunk")
    p.add_argument("--force", action="store_true", help="redo even if the folder is already prepared")
    p.add_argument("--verify", action="store_true", help="only verify an existing prepared --out folder")
    p.add_argument("--no-checksums", action="store_true", help="with --verify: skip sha256 checks")
    p.add_argument("--no-progress", action="store_true")
    s = sub.add_parser("synth", help="write a synthetic NTU-format .skeleton dataset")
    s.add_argument("--out", required=True, help="output folder (created; empty, or holding this same dataset)")
    s.add_argument("--num-classes", type=int, default=10, help="action classes, 2-999 (default 10)")
    s.add_argument("--samples-per-class", type=int, default=30, help="samples of each class (default 30)")
    s.add_argument("--seed", type=int, default=0, help="generator seed, >= 0 (default 0)")
    s.add_argument("--noise", type=float, default=1.0,
                   help="scale of the pose variation and sensor noise, >= 0 (default 1.0)")
    s.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help=f"processes (0: none; default {os.cpu_count() or 1}, the CPU count)")
    s.add_argument("--no-progress", action="store_true")
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .preparation import PrepareError, prepare, verify
    from .skeleton_reader import SkeletonFormatError

    try:
        if args.command == "prepare":
            if args.verify:
                man = verify(args.out, checksums=not args.no_checksums, raw_dir=args.raw)
                check_verified_kind(man, args.out, args.dataset, args.benchmark)
            else:
                if not args.raw:
                    raise PrepareError("prepare needs --raw DIR (or --verify)")
                prepare(args.raw, args.out, dataset=args.dataset or "ntu60", benchmark=args.benchmark or "xsub",
                        workers=args.workers, chunk_size=args.chunk_size, progress=not args.no_progress,
                        force=args.force)
        else:
            from .synthetic import generate

            paths = generate(args.out, args.num_classes, args.samples_per_class, args.seed, args.noise,
                             workers=args.workers, progress=not args.no_progress)
            print(f"{args.out}: wrote {len(paths)} synthetic .skeleton files ({args.num_classes} classes)")
    except KeyboardInterrupt:
        again = "re-run the same command to resume" if args.command == "prepare" else "re-run to finish"
        print(f"interrupted; finished chunks are kept: {again}", file=sys.stderr)
        return 130
    except BrokenProcessPool as exc:   # a worker died mid-prepare, typically killed for memory
        print(f"error: {exc} (out of memory? retry with fewer --workers; finished chunks are kept)",
              file=sys.stderr)
        return 2
    except (PrepareError, SkeletonFormatError, ValueError, OSError) as exc:
        # OSError: a missing path, permissions, a folder named like a file, a full disk (names the path)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def check_verified_kind(manifest: dict, out: str, dataset, benchmark) -> None:
    """With --verify, a given --dataset / --benchmark must be what the folder holds (they were ignored)."""
    from .ntu import normalise_benchmark
    from .preparation import PrepareError

    if dataset is not None and manifest["dataset"] != dataset:
        raise PrepareError(f"{out} holds {manifest['dataset']} data, not --dataset {dataset}")
    if benchmark is not None and manifest["benchmark"] != normalise_benchmark(benchmark):
        raise PrepareError(f"{out} holds the {manifest['benchmark']} split, not --benchmark {benchmark}")


if __name__ == "__main__":
    sys.exit(main())
