"""Benchmark CSV -> Markdown report and PNG plots; regression comparison of two CSVs.

  python -m benchmarks.report benchmarks/results/<device>.csv        writes <device>.md and plots
  python -m benchmarks.report --compare OLD.csv NEW.csv [--tolerance 0.15]

Plots (benchmarks/results/plots/<device>_*.png): speed-up over the eager reference per op, time
versus batch size per op, peak memory per op and provider.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

CASE = ("op", "provider", "mode", "shape", "dtype")


class ReportError(ValueError):
    """A results CSV that cannot be read or compared; the message names the file."""


def load(path: str, run_id: Optional[str] = None) -> List[Dict[str, str]]:
    """Rows of a results CSV; for each case only the newest measurement (by timestamp); with
    `run_id`, only that run's rows. Raises ReportError for a missing or malformed file."""
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            fields = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ReportError(f"{path}: cannot read it as a results CSV ({type(exc).__name__}: {exc})") from None
    missing = [k for k in CASE + ("p50_ms",) if k not in fields]
    if rows and missing:
        raise ReportError(f"{path}: not a benchmark results CSV (no column {', '.join(missing)})")
    if run_id is not None:
        rows = [r for r in rows if r.get("run_id") == run_id]
    newest: Dict[Tuple[str, ...], Dict[str, str]] = {}
    for row in rows:
        key = tuple(row.get(k, "") for k in CASE) + (row.get("device_name", ""),)
        if key not in newest or row.get("timestamp", "") >= newest[key].get("timestamp", ""):
            newest[key] = row
    return list(newest.values())


def _f(row, key):
    try:
        return float(row.get(key, ""))
    except ValueError:
        return None


def _size(shape: str, name: str):
    """The integer `name=` of a shape string ("G=6,N=64,..."), or None."""
    m = re.search(rf"\b{name}=(\d+)", shape)
    return int(m.group(1)) if m else None


def _batch(shape: str):
    return _size(shape, "N")


def _scale(shape: str) -> Tuple[int, int]:
    """(N, K) of a shape for ordering (numbers, not text: K=4096 before K=32768); 0 where absent."""
    return _size(shape, "N") or 0, _size(shape, "K") or 0


def _short_case(r) -> str:
    """mode, N and K of a row (plot labels)."""
    parts = [r["mode"]] + [f"{k}={v}" for k in ("N", "K") if (v := _size(r["shape"], k))]
    return ", ".join(parts)


def _memory_label(r) -> str:
    """op, mode and sizes (the whole shape where it has no N), provider and dtype of a row."""
    case = _short_case(r) if _size(r["shape"], "N") else f"{r['mode']}, {r['shape']}"
    return f"{r['op']} {case}\n{r['provider']}, {r['dtype']}"


def _versions(rows, key: str) -> str:
    """The values of `key` over the rows, the most frequent first, with row counts when they differ."""
    counts: Dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r.get(key) or "?"] += 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{v} ({n} row{'s' if n > 1 else ''})" for v, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _fmt(v, spec="{:.3g}"):
    return "" if v is None else spec.format(v)


def _achieved(r) -> str:
    """Achieved GB/s and TFLOP/s not already shown in the throughput column."""
    unit = r.get("throughput_unit", "")
    parts = [f"{v:.3g} {u}" for key, u in (("gbs", "GB/s"), ("tflops", "TFLOP/s"))
             if (v := _f(r, key)) is not None and unit != u]
    return ", ".join(parts)


def _floor_cell(r) -> str:
    pct = _f(r, "pct_of_floor")
    if pct is None:
        return ""
    cell = f"{pct:.1f}%" + (f" ({r['floor_bound']})" if r.get("floor_bound") else "")
    peak = _f(r, "pct_of_datasheet_peak")
    return cell + (f"; {peak:.1f}% of datasheet peak" if peak is not None else "")


def _group(r) -> Tuple[str, ...]:
    """A case without its provider: the rows compared with each other in one table block."""
    return tuple(r.get(k, "") for k in ("op", "mode", "shape", "dtype", "device_name"))


def _latest_runs(rows: List[Dict[str, str]]) -> Dict[Tuple[str, ...], str]:
    """The run_id of the newest row of each group (rows written before run_id existed have none)."""
    latest: Dict[Tuple[str, ...], Tuple[str, str]] = {}
    for r in rows:
        if r.get("run_id") and (_group(r) not in latest or r.get("timestamp", "") >= latest[_group(r)][0]):
            latest[_group(r)] = (r.get("timestamp", ""), r["run_id"])
    return {g: run for g, (_, run) in latest.items()}


def _provider_cell(r, latest) -> str:
    """The provider, flagged when its row is older than the group's newest run: a provider that
    failed or was skipped in a re-run keeps its earlier row, and its ratios were against that run."""
    run = latest.get(_group(r))
    if run and r.get("run_id") != run:
        return f"{r['provider']} (earlier run, git {r.get('git_sha', '?')}, {r.get('timestamp', '?')[:10]})"
    return r["provider"]


def markdown(rows: List[Dict[str, str]]) -> str:
    if not rows:
        return "No benchmark rows.\n"
    lines = [f"# skelfast benchmarks on {_versions(rows, 'device_name')}", "",
             f"torch {_versions(rows, 'torch_version')}, skelfast {_versions(rows, 'skelfast_version')}, "
             f"git {_versions(rows, 'git_sha')}, measured {min(r.get('timestamp', '') for r in rows)[:10]} to "
             f"{max(r.get('timestamp', '') for r in rows)[:10]} (UTC). "
             "Medians over repeated runs (p20-p80 in brackets); speed-ups are against the eager reference "
             "and against torch.compile of it, measured in the same run. Achieved GB/s and TFLOP/s are at "
             "each case's minimal traffic and nominal FLOPs; % of floor = floor / median, with the floor "
             "max(bytes / copy bandwidth, FLOPs / GEMM rate, exps / exp rate where counted) measured on this "
             "device in the same run and its binding term in brackets (performance.md §2; the benchmark modules define bytes and FLOPs).",
             ""]
    by_op = defaultdict(list)
    for r in rows:
        by_op[r["op"]].append(r)
    latest = _latest_runs(rows)
    for op in sorted(by_op):
        lines += [f"## {op}", "", "| provider | mode | shape | dtype | median ms [p20-p80] | vs eager | vs compile | "
                  "throughput | achieved | % of floor | peak MiB |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(by_op[op], key=lambda r: (r["mode"], _scale(r["shape"]), r["shape"], r["provider"])):
            tp = _f(r, "throughput")
            lines.append("| {} | {} | {} | {} | {} [{}-{}] | {} | {} | {} | {} | {} | {} |".format(
                _provider_cell(r, latest), r["mode"], r["shape"], r["dtype"], _fmt(_f(r, "p50_ms")), _fmt(_f(r, "p20_ms")),
                _fmt(_f(r, "p80_ms")), _fmt(_f(r, "speedup_vs_reference"), "{:.2f}x"),
                _fmt(_f(r, "speedup_vs_compile"), "{:.2f}x"),
                "" if tp is None else f"{tp:.3g} {r.get('throughput_unit', '')}", _achieved(r), _floor_cell(r),
                _fmt(_f(r, "peak_mem_mb"), "{:.1f}")))
        lines.append("")
    return "\n".join(lines)


def plots(rows: List[Dict[str, str]], out_prefix: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    by_op = defaultdict(list)
    for r in rows:
        by_op[r["op"]].append(r)
    # 1. speed-up over eager per op: the best skelfast row at each op's largest (N, K), named with
    #    its mode, sizes, provider and dtype (a bf16 row's ratio is over the fp32 reference)
    labels, values = [], []
    for op, rs in sorted(by_op.items()):
        ours = [r for r in rs if r["provider"].startswith("skelfast") and _f(r, "speedup_vs_reference")]
        if not ours:
            continue
        biggest = max(_scale(r["shape"]) for r in ours)
        best = max((r for r in ours if _scale(r["shape"]) == biggest), key=lambda r: _f(r, "speedup_vs_reference"))
        labels.append(f"{op}\n{_short_case(best)}\n{best['provider']}, {best['dtype']}")
        values.append(_f(best, "speedup_vs_reference"))
    if values:
        fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(values)), 4))
        ax.bar(range(len(values)), values, color="tab:green")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")  # speed-ups span 1x..1000x
        ax.set_xticks(range(len(values)), labels, fontsize=7, rotation=20)
        ax.set_ylabel("speed-up over eager reference (x, log)")
        ax.set_title(f"skelfast speed-up, {rows[0].get('device_name')}")
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.1f}x", ha="center", va="bottom", fontsize=8)
        fig.tight_layout()
        path = f"{out_prefix}_speedup.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    # 2. time vs batch size, one panel per op with >1 batch size
    sweep_ops = [op for op, rs in sorted(by_op.items()) if len({_batch(r["shape"]) for r in rs} - {None}) > 1]
    if sweep_ops:
        fig, axes = plt.subplots(1, len(sweep_ops), figsize=(4.5 * len(sweep_ops), 3.6), squeeze=False)
        for ax, op in zip(axes[0], sweep_ops):
            series = defaultdict(list)
            for r in by_op[op]:
                if _batch(r["shape"]) is not None:
                    series[(r["provider"], r["mode"])].append((_batch(r["shape"]), _f(r, "p50_ms"), _f(r, "p20_ms"), _f(r, "p80_ms")))
            for (prov, mode), pts in sorted(series.items()):
                pts.sort()
                xs = [p[0] for p in pts]
                ax.plot(xs, [p[1] for p in pts], marker="o", label=f"{prov} ({mode})")
                ax.fill_between(xs, [p[2] for p in pts], [p[3] for p in pts], alpha=0.2)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch size N")
            ax.set_ylabel("median ms")
            ax.set_title(op)
            ax.legend(fontsize=6)
        fig.tight_layout()
        path = f"{out_prefix}_time_vs_batch.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    # 3. peak memory: per op and mode, the case at the largest (N, K) (among shapes without N, the
    #    one with the largest peak), one bar per provider and dtype; every label names its case
    mem = []
    for op, rs in sorted(by_op.items()):
        for mode in sorted({r["mode"] for r in rs}):
            ms = [r for r in rs if r["mode"] == mode and _f(r, "peak_mem_mb") is not None]
            if ms:
                shape = max(ms, key=lambda r: (_scale(r["shape"]), _f(r, "peak_mem_mb")))["shape"]
                mem += sorted((r for r in ms if r["shape"] == shape), key=lambda r: (r["dtype"], r["provider"]))
    if mem:
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(mem)), 5))
        ax.bar(range(len(mem)), [_f(r, "peak_mem_mb") for r in mem], color="tab:blue")
        ax.set_xticks(range(len(mem)), [_memory_label(r) for r in mem], rotation=90, fontsize=5)
        ax.set_yscale("symlog", linthresh=1.0)  # streaming losses use 1-2 orders of magnitude less; 0 MiB stays drawable
        ax.set_ylabel("peak memory (MiB, symlog)")
        ax.set_title("peak memory per case and provider (each op and mode at its largest size)")
        fig.tight_layout()
        path = f"{out_prefix}_peak_memory.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def write_report(csv_path: str) -> str:
    """Write <csv>.md next to the CSV and PNG plots under plots/; returns the Markdown path."""
    rows = load(csv_path)
    base = os.path.splitext(csv_path)[0]
    plot_dir = os.path.join(os.path.dirname(csv_path), "plots")
    os.makedirs(plot_dir, exist_ok=True)
    pngs = plots(rows, os.path.join(plot_dir, os.path.basename(base)))
    text = markdown(rows)
    if pngs:
        text += "\n" + "\n".join(f"![{os.path.basename(p)}](plots/{os.path.basename(p)})" for p in pngs) + "\n"
    md = base + ".md"
    with open(md, "w") as fh:
        fh.write(text)
    return md


def check_tolerance(tolerance: float) -> float:
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ReportError(f"--tolerance must be a finite number >= 0 (allowed slow-down ratio - 1), got {tolerance}")
    return tolerance


def compare(old_csv, new_csv: str, tolerance: float = 0.15, run_id: Optional[str] = None) -> int:
    """Print new/old median ratios per common case; 1 if any is slower than (1 + tolerance)x, or if
    no case could be compared. old_csv: a path, or rows already loaded (a suite run loads them
    before it writes, as its CSV may be the same file); run_id: compare only that run's new rows."""
    check_tolerance(tolerance)
    key_of = lambda r: tuple(r[k] for k in CASE) + (r.get("device_name", ""),)  # noqa: E731 (same machine only)
    old_rows = load(old_csv) if isinstance(old_csv, str) else old_csv
    old_name = old_csv if isinstance(old_csv, str) else "the baseline"
    old = {key_of(r): r for r in old_rows}
    new = {key_of(r): r for r in load(new_csv, run_id)}
    common = sorted(set(old) & set(new))
    if not common:
        devices = lambda rows: sorted({r.get("device_name", "") for r in rows})  # noqa: E731
        why = (f" (devices {devices(old.values())} and {devices(new.values())})"
               if devices(old.values()) != devices(new.values()) else "")
        print(f"no common cases between {old_name} and {new_csv}{why}")
        return 1
    worst, regressions, compared = 0.0, [], 0
    print(f"{'case':<90} {'old ms':>9} {'new ms':>9} {'new/old':>8}")
    for key in common:
        o, n = _f(old[key], "p50_ms"), _f(new[key], "p50_ms")
        if not o or n is None or not (math.isfinite(o) and math.isfinite(n)):
            print(f"{' | '.join(key)[:90]:<90} {'no median to compare':>28}")
            continue
        compared += 1
        ratio = n / o
        worst = max(worst, ratio)
        flag = "  REGRESSION" if ratio > 1 + tolerance else ""
        print(f"{' | '.join(key)[:90]:<90} {o:9.4g} {n:9.4g} {ratio:8.3f}{flag}")
        if flag:
            regressions.append(key)
    if not compared:
        print(f"none of the {len(common)} common cases has medians in both files: nothing compared")
        return 1
    print(f"{compared} cases compared, worst ratio {worst:.3f}, tolerance {1 + tolerance:.2f}: "
          f"{len(regressions)} regression(s)")
    return 1 if regressions else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("csv", nargs="*", help="results CSV(s) to report on")
    parser.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"))
    parser.add_argument("--tolerance", type=float, default=0.15, help="with --compare: allowed slow-down ratio - 1")
    args = parser.parse_args(argv)
    if args.compare and args.csv:
        parser.error("give CSVs to report on, or --compare OLD NEW, not both")
    if not args.compare and not args.csv:
        parser.error("give a results CSV or --compare OLD NEW")
    try:
        if args.compare:
            return compare(*args.compare, args.tolerance)
        for path in args.csv:
            print(write_report(path))
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
