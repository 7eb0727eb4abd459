"""`python -m benchmarks`: run every benchmark for the providers this machine has, then report.

Each benchmarks/bench_*.py runs in its own process (a failing or crashing benchmark is reported
and the suite goes on), writes its rows into one CSV per device (benchmarks/_harness.py), and at
the end benchmarks/report.py turns the CSV into a Markdown report and PNG plots.

  python -m benchmarks                 full suite, results in benchmarks/results/
  python -m benchmarks --quick         small shapes, short timing (about 3 min on an idle 2-core CPU)
  python -m benchmarks --compare OLD.csv [--tolerance 0.15]
                                       after running, print new/old time ratios and exit 1 when
                                       any case is slower than OLD by more than the tolerance
  python -m benchmarks --compare OLD.csv --against NEW.csv
                                       compare two CSVs without running anything
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time

import torch

from . import _harness as H
from . import report

HERE = os.path.dirname(os.path.abspath(__file__))


def discover() -> list:
    """bench_*.py modules in this folder, in a stable order."""
    return sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(HERE, "bench_*.py")))


def run_one(name: str, args, out_dir: str, run_id: str) -> tuple:
    cmd = [sys.executable, "-m", f"benchmarks.{name}", "--device", args.device, "--out-dir", out_dir]
    if args.quick:
        cmd.append("--quick")
    start = time.perf_counter()
    print(f"\n=== {name}: {' '.join(cmd[2:])}", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=os.path.dirname(HERE), timeout=args.timeout,
                              env={**os.environ, "SKELFAST_BENCH_RUN_ID": run_id})
        ok = proc.returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
        print(f"{name}: timed out after {args.timeout} s")
    return ok, time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes and short timing (smoke run)")
    parser.add_argument("--device", type=H.device_arg, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", type=H.names_from(discover()), default=None,
                        help=f"comma-separated benchmark names from {', '.join(discover())}")
    parser.add_argument("--out-dir", default=None,
                        help="results folder (default benchmarks/results; with --quick benchmarks/results/_scratch)")
    parser.add_argument("--timeout", type=H.positive_int, default=1800, help="seconds per benchmark")
    parser.add_argument("--compare", default=None, metavar="OLD.csv", help="regression check against OLD.csv")
    parser.add_argument("--against", default=None, metavar="NEW.csv", help="with --compare: compare files only")
    parser.add_argument("--tolerance", type=float, default=0.15, help="allowed slow-down ratio - 1 (default 0.15)")
    parser.add_argument("--no-report", action="store_true", help="skip the Markdown/PNG report")
    args = parser.parse_args(argv)
    if args.against and not args.compare:
        parser.error("--against NEW.csv compares files with --compare OLD.csv; give both")
    try:
        report.check_tolerance(args.tolerance)
        if args.compare and args.against:
            return report.compare(args.compare, args.against, args.tolerance)
        # the baseline is read before anything runs: it may be the very CSV this run writes into,
        # and a missing or malformed file should not wait for the whole suite
        baseline = report.load(args.compare) if args.compare else None
    except report.ReportError as exc:
        parser.error(str(exc))

    device = torch.device(args.device)
    out_dir = os.path.abspath(args.out_dir or H.default_out_dir(args.quick))   # the benchmarks run in the repo root
    names = args.only or discover()
    run_id = H.RUN_ID      # this process's id, handed to every benchmark it starts
    summary = [(name, *run_one(name, args, out_dir, run_id)) for name in names]
    print("\nbenchmark summary")
    for name, ok, seconds in summary:
        print(f"  {'ok  ' if ok else 'FAIL'} {name:<24} {seconds:7.1f} s")
    csv_path = H.results_path(device, out_dir)
    status = 0 if all(ok for _, ok, _ in summary) else 1
    if os.path.exists(csv_path) and not args.no_report:
        md = report.write_report(csv_path)
        print(f"report: {md}")
    if args.compare:
        if not os.path.exists(csv_path):
            print(f"no results were written to {csv_path}: nothing to compare")
            return max(status, 1)
        status = max(status, report.compare(baseline, csv_path, args.tolerance, run_id=run_id))
    return status


if __name__ == "__main__":
    sys.exit(main())
