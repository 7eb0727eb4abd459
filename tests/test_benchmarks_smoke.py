"""The benchmark suite never rots: `python -m benchmarks --quick` runs end to end on CPU, and the
report and --compare regression gate behave (issue: benchmark suite)."""
import csv
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from benchmarks import _harness as H
from benchmarks import report

FIELDS = H.KEY_FIELDS + H.VALUE_FIELDS


def _write(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def _row(provider, p50, shape="N=32", ts="2026-01-01T00:00:00"):
    return {"op": "modalities", "provider": provider, "mode": "forward", "shape": shape, "dtype": "float32",
            "device_name": "cpu-test", "torch_version": "2.13", "skelfast_version": "0.1", "git_sha": "x",
            "p50_ms": p50, "p20_ms": p50 * 0.9, "p80_ms": p50 * 1.1, "peak_mem_mb": 1.0,
            "speedup_vs_reference": 10.0 / p50, "speedup_vs_compile": 2.0 / p50, "timestamp": ts}


def test_measure_interleaved_cancels_drift(monkeypatch):
    """Round-robin timing: every provider gets its repetitions, the order alternates, and a machine
    that slows down steadily leaves the ratio of the medians intact (timing one provider after the
    other, as measure() does, would put all of the slowdown on the provider timed last)."""
    order, timed, clock = [], [], {"slowdown": 1.0}
    cost = {"reference": 2.0, "skelfast": 1.0}

    def fake_time_once(fn, device):
        fn()
        timed.append(order[-1])
        clock["slowdown"] *= 1.1          # the machine drifts 10% slower per call
        return cost[order[-1]] * clock["slowdown"]

    monkeypatch.setattr(H, "_time_once", fake_time_once)
    fns = {name: (lambda name=name: order.append(name)) for name in cost}
    stats = H.measure_interleaved(fns, torch.device("cpu"), warmup=0, min_reps=6, min_time_s=0.0, per_turn=1)
    assert [s.n for s in stats.values()] == [6, 6]
    assert timed[:6] == ["reference", "skelfast", "skelfast", "reference", "reference", "skelfast"]
    ratio = stats["reference"].p50 / stats["skelfast"].p50
    assert 1.7 < ratio < 2.3, ratio
    timed.clear()   # turns of 2 calls, each turn after releasing the free heap
    assert [s.n for s in H.measure_interleaved(fns, torch.device("cpu"), warmup=0, min_reps=3,
                                               min_time_s=0.0, per_turn=2).values()] == [4, 4]
    assert timed == ["reference"] * 2 + ["skelfast"] * 4 + ["reference"] * 2
    timed.clear()   # CPU default: one provider after the other (see measure_interleaved)
    H.measure_interleaved(fns, torch.device("cpu"), warmup=0, min_reps=3, min_time_s=0.0)
    assert timed == ["reference"] * 3 + ["skelfast"] * 3
    sequential = {}
    for name, fn in fns.items():
        sequential[name] = H.measure(fn, torch.device("cpu"), warmup=0, min_reps=6, min_time_s=0.0).p50
    assert sequential["reference"] / sequential["skelfast"] < 1.5   # what interleaving protects against


def test_cpu_results_are_named_by_vector_isa(monkeypatch):
    """Rows of an AVX2 and an AVX-512 host of the same core count go to different CSVs."""
    cpu = torch.device("cpu")
    for isa in ("AVX2", "AVX512"):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda isa=isa: isa)
        assert H.device_name(cpu).endswith("-" + isa.lower())
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    avx2 = H.results_path(cpu)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert H.results_path(cpu) != avx2


def test_compare_flags_regressions(tmp_path, capsys):
    old, same, slow = tmp_path / "old.csv", tmp_path / "same.csv", tmp_path / "slow.csv"
    _write(old, [_row("reference", 10.0), _row("skelfast", 1.0)])
    _write(same, [_row("reference", 10.5), _row("skelfast", 1.05)])
    _write(slow, [_row("reference", 10.0), _row("skelfast", 1.5)])
    assert report.compare(str(old), str(same), tolerance=0.15) == 0
    assert report.compare(str(old), str(slow), tolerance=0.15) == 1
    assert "REGRESSION" in capsys.readouterr().out


def test_report_keeps_newest_row_and_writes_plots(tmp_path):
    path = tmp_path / "dev.csv"
    _write(path, [_row("reference", 10.0), _row("skelfast", 3.0, ts="2026-01-01"), _row("skelfast", 1.0, ts="2026-02-01"),
                  _row("reference", 40.0, shape="N=128"), _row("skelfast", 2.0, shape="N=128")])
    md = report.write_report(str(path))
    text = open(md).read()
    assert "| skelfast | forward | N=32 | float32 | 1 [" in text  # the newer of the two N=32 rows
    assert "| skelfast | forward | N=32 | float32 | 3 [" not in text
    for name in ("speedup", "time_vs_batch", "peak_memory"):
        assert (tmp_path / "plots" / f"dev_{name}.png").stat().st_size > 1000


def test_quick_runs_do_not_overwrite_the_committed_results():
    """A --quick smoke run upserts its rows into the same cases as a full run: by default it writes
    to the git-ignored scratch folder, never over benchmarks/results/<device>.csv."""
    from benchmarks import _harness as H
    parser = H.bench_parser("doc", "quick")
    assert parser.parse_args(["--quick"]).out_dir == H.SCRATCH_DIR
    assert parser.parse_args([]).out_dir == H.RESULTS_DIR
    assert parser.parse_args(["--quick", "--out-dir", "/x"]).out_dir == "/x"
    assert H.default_out_dir(True) == H.SCRATCH_DIR
    if os.path.isdir(os.path.join(ROOT, ".git")):   # a checkout (not an unpacked sdist)
        ignored = subprocess.run(["git", "check-ignore", "-q", os.path.join(H.SCRATCH_DIR, "cpu.csv")], cwd=ROOT)
        assert ignored.returncode == 0, "the scratch folder must be git-ignored"


def test_quick_suite_runs_end_to_end(tmp_path):
    """Every bench_*.py with --quick, one CSV for the device, a report, and a self-compare that passes."""
    env = {**os.environ, "SKELFAST_QUIET_IMPORT": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--device", "cpu", "--out-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    csvs = [p for p in os.listdir(tmp_path) if p.endswith(".csv")]
    assert len(csvs) == 1, csvs
    rows = list(csv.DictReader(open(tmp_path / csvs[0])))
    ops = {r["op"] for r in rows}
    assert {"modalities", "momentum_update", "enqueue", "encoder", "train_step", "data_reader", "augment_2views",
            "losses_phase1", "losses_phase2", "losses_distill", "epilogue"} <= ops
    for r in rows:
        case = (r["op"], r["provider"], r["mode"])
        assert float(r["p50_ms"]) > 0, case
        # every case: speed-up over its eager reference, a rate, achieved GB/s or TFLOP/s, and % of its floor
        for col in ("speedup_vs_reference", "throughput", "throughput_unit", "pct_of_floor", "floor_us", "floor_bound"):
            assert r[col] != "", (col, case)
        assert r["gbs"] or r["tflops"], case
        # ops whose torch.compile baseline runs in --quick (encoder and train_step leave it out there)
        if r["op"] in ("modalities", "momentum_update", "augment_2views", "epilogue") or r["op"].startswith("losses_"):
            assert r["speedup_vs_compile"] != "", case
    assert (tmp_path / csvs[0].replace(".csv", ".md")).exists()
    again = subprocess.run([sys.executable, "-m", "benchmarks", "--compare", str(tmp_path / csvs[0]),
                            "--against", str(tmp_path / csvs[0])], cwd=ROOT, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stdout
    # A run compared with the CSV it writes into: the baseline is read before the run (it used to be
    # overwritten first, so every ratio read 1.000), and only this run's rows are compared (the
    # other benchmarks' rows in the file used to count as compared cases). The tolerance is wide:
    # this checks the bookkeeping, not the timing noise of a shared CI box.
    before = {tuple(r[k] for k in H.CASE_FIELDS): r["p50_ms"] for r in rows if r["op"] == "momentum_update"}
    rerun = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--device", "cpu", "--only", "bench_moco",
                            "--out-dir", str(tmp_path), "--compare", str(tmp_path / csvs[0]), "--tolerance", "1000",
                            "--no-report"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-4000:]
    moco = [r for r in csv.DictReader(open(tmp_path / csvs[0])) if r["op"] in ("momentum_update", "enqueue")]
    assert f"{len(moco)} cases compared" in rerun.stdout, rerun.stdout[-2000:]
    compared = [line for line in rerun.stdout.splitlines() if line.startswith("momentum_update")]
    for key, p50 in before.items():   # the old medians are the baseline's, not the rerun's
        line = next(x for x in compared if x.startswith(" | ".join(key[:5])))
        assert f"{float(p50):9.4g}" in line, (line, p50)


def test_report_flags_rows_left_from_an_earlier_run(tmp_path):
    """A provider that failed (or was left out) in a re-run keeps its older row in the CSV; the
    report marks it, since its time and ratios belong to the earlier run."""
    path = tmp_path / "dev.csv"
    old = [dict(_row("reference", 100.0), run_id="r1", git_sha="old"), dict(_row("skelfast", 5.0), run_id="r1")]
    new = [dict(_row("reference", 60.0, ts="2026-02-01T00:00:00"), run_id="r2", git_sha="new")]
    _write(path, old + new)
    text = open(report.write_report(str(path))).read()
    assert "| skelfast (earlier run, git x, 2026-01-01) | forward | N=32 |" in text
    assert "| reference | forward | N=32 | float32 | 60 [" in text


def test_losses_bench_checks_a_provider_without_a_timed_reference(monkeypatch):
    """--providers skelfast alone: the untimed reference still checks the result before timing."""
    from benchmarks import bench_losses
    from skelfast import ops
    monkeypatch.setattr(ops, "info_nce", lambda q, k, queue, tau=0.07: (q * k).sum((1, 2)) * 0 + 1.0)
    with pytest.raises(AssertionError, match="provider 'skelfast' disagrees with the reference"):
        bench_losses.run(["phase1"], [256], ["skelfast"], torch.device("cpu"), True)


def test_output_checks_refuse_a_provider_with_fewer_outputs():
    ones = torch.ones(2)
    H.check_close("ok", [ones, ones], [ones, ones], atol=0, rtol=0)
    for check in (lambda: H.check_close("short", [ones], [ones, ones], atol=0, rtol=0),
                  lambda: H.check_rel_l2("short", [ones], [ones, ones], 1e-3)):
        with pytest.raises(AssertionError, match="'short' returned 1 outputs, the reference 2"):
            check()


@torch.library.custom_op("skelfast_test::scratch_sum", mutates_args=())
def _scratch_sum(x: torch.Tensor) -> torch.Tensor:
    scratch = torch.empty(8 * 2**20 // 4)    # 8 MiB allocated and freed inside the one op
    scratch.fill_(1.0)
    return x.sum() + scratch[0]


def test_cpu_peak_memory_counts_scratch_inside_one_op():
    """Memory an op allocates and frees inside itself (a torch.compile'd region, a C++ kernel's
    scratch) is part of the peak. The per-op net allocations measured it as ~0. Found by review."""
    x = torch.ones(4)
    peak = H.peak_memory_mb(lambda: _scratch_sum(x), torch.device("cpu"))
    assert 8.0 <= peak < 8.1, peak
    peak_eager = H.peak_memory_mb(lambda: torch.empty(2 * 2**20).add_(1).sum(), torch.device("cpu"))
    assert 8.0 <= peak_eager < 8.1, peak_eager


def test_cuda_graph_pool_counts_segments_outside_the_default_pool(monkeypatch):
    """What CUDA graphs hold in their private pools (a replay itself allocates nothing)."""
    segs = [{"device": 0, "total_size": 2 * 2**20, "segment_pool_id": (0, 0)},
            {"device": 0, "total_size": 3 * 2**20, "segment_pool_id": (1, 4)},
            {"device": 1, "total_size": 5 * 2**20, "segment_pool_id": (1, 5)}]
    monkeypatch.setattr(torch.cuda, "memory_snapshot", lambda: segs)
    assert H.cuda_graph_pool_mb(torch.device("cuda:0")) == 3.0
    assert H.cuda_graph_pool_mb(torch.device("cuda:1")) == 5.0


def test_report_orders_sizes_as_numbers_and_names_every_case(tmp_path):
    """K=4096 before K=32768 (numbers, not text); the header lists every commit of the rows; the
    memory plot's bars each name their case (op, mode, sizes, provider, dtype). Found by review."""
    rows = [dict(_row("skelfast", 2.0, shape="N=128,K=32768"), op="losses_phase2", mode="full", git_sha="b"),
            dict(_row("skelfast", 1.0, shape="N=128,K=4096"), op="losses_phase2", mode="full", git_sha="a"),
            dict(_row("reference", 9.0, shape="N=128,K=32768"), op="losses_phase2", mode="full", git_sha="a"),
            dict(_row("skelfast", 1.0, shape="N*M=128,C=96"), op="epilogue", mode="bn_relu"),
            dict(_row("skelfast", 1.0, shape="N*M=128,C=384"), op="epilogue", mode="bn_relu")]
    path = tmp_path / "dev.csv"
    _write(path, rows)
    text = open(report.write_report(str(path))).read()
    assert text.index("| N=128,K=4096 |") < text.index("| N=128,K=32768 |")
    assert "git a (2 rows), x (2 rows), b (1 row)," in text
    loaded = report.load(str(path))
    labels = [report._memory_label(r) for r in loaded]
    assert len(set(labels)) == len(labels), labels
    assert "losses_phase2 full, N=128, K=4096\nskelfast, float32" in labels
    assert "epilogue bn_relu, N*M=128,C=96\nskelfast, float32" in labels


def test_compare_refuses_what_it_cannot_compare(tmp_path, capsys):
    """Bad baselines and tolerances are errors; comparing nothing is not a pass (it was: '43 cases
    compared, worst ratio 0.000, 0 regression(s)')."""
    old = tmp_path / "old.csv"
    _write(old, [_row("reference", 10.0)])
    blank = tmp_path / "blank.csv"
    _write(blank, [dict(_row("reference", 10.0), p50_ms="")])
    assert report.compare(str(old), str(blank)) == 1
    assert "nothing compared" in capsys.readouterr().out
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    for bad in (tmp_path / "missing.csv", tmp_path, tmp_path / "other.csv"):
        with pytest.raises(report.ReportError, match="results CSV"):
            report.compare(str(bad), str(old))
    for tol in (-0.5, float("nan")):
        with pytest.raises(report.ReportError, match="--tolerance"):
            report.compare(str(old), str(old), tolerance=tol)
    mixed = tmp_path / "mixed.csv"
    _write(mixed, [dict(_row("reference", 10.0), run_id="a"), dict(_row("skelfast", 1.0), run_id="b")])
    assert len(report.load(str(mixed), run_id="b")) == 1
    assert report.main([str(tmp_path / "missing.csv")]) == 2


@pytest.mark.parametrize("argv, message", [
    (["--only", ""], "no empty items"), (["--only", "bench_nope"], "unknown ['bench_nope']"),
    (["--timeout", "0"], "must be >= 1"), (["--device", "nonsense"], "is not a device"),
    (["--against", "x.csv"], "give both"), (["--compare", "/nonexistent.csv"], "cannot read it"),
    (["--tolerance", "-1", "--compare", "/nonexistent.csv"], "--tolerance must be"),
])
def test_suite_options_are_checked_before_running(argv, message, capsys):
    from benchmarks.__main__ import main
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_benchmark_option_types():
    import argparse
    assert H.positive_ints("64, 128") == [64, 128]
    for bad in ("", ",", "0", "-4", "abc", "64,"):
        with pytest.raises(argparse.ArgumentTypeError):
            H.positive_ints(bad)
    assert H.names_from(("a", "b"))("b,a") == ["b", "a"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown"):
        H.names_from(("a", "b"))("a,bogus")
    assert H.device_arg("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(argparse.ArgumentTypeError, match="is_available"):
            H.device_arg("cuda")
    H.print_table([], ["op"])            # an empty table used to raise TypeError


def test_compare_only_pairs_rows_of_the_same_device(tmp_path, capsys):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    _write(a, [_row("skelfast", 1.0)])
    _write(b, [dict(_row("skelfast", 5.0), device_name="other-machine")])
    assert report.compare(str(a), str(b)) == 1
    assert "no common cases" in capsys.readouterr().out


def test_floor_names_its_binding_term(monkeypatch):
    """The §2 floor is the largest of the memory, GEMM and exp terms, and names it; tf32x3 prices
    CUDA fp32 GEMMs at a third of the TF32 rate and is ignored on CPU."""
    cpu = torch.device("cpu")
    monkeypatch.setitem(H._CEILINGS, ("exp", str(cpu)), 1e9)                        # 1 G exps/s
    monkeypatch.setattr(H, "gemm_tflops", lambda device, dtype=torch.float32, n=2048, tf32=False: 4.0 if tf32 else 1.0)
    monkeypatch.setattr(H, "copy_bandwidth_gbs", lambda device, mbytes=None: 1000.0)
    assert H.floor(flops=2e12, exps=1e9, device=cpu) == (2e6, "compute")          # 2 s of GEMM > 1 s of exps
    assert H.floor(flops=2e11, exps=1e9, device=cpu) == (1e6, "exp")
    assert H.floor(flops=2e12, device=cpu, tf32x3=True) == (2e6, "compute")        # no TF32 on CPU
    cuda = torch.device("cuda")
    us, term = H.floor(flops=4e12, device=cuda, tf32x3=True)
    assert (round(us), term) == (3e6, "compute, tf32x3")                           # 4e12 / (4e12 / 3)
    assert H.exp_rate(cuda) == H.GPU_EXP_PER_S
    from benchmarks import bench_losses as B
    assert B.exp_count("phase2", 32768) == 27 * 128 * 32768                        # performance.md §6: 113 M
    assert B.exp_count("distill", 100) == 21 * 128 * 100
    assert B.queue_bytes("distill", 10) == 2 * 6 * 128 * 10 * 4
