"""benchmarks/bench_step.py runs (quick sizes) and reports a step time and a projection per provider."""
from benchmarks import bench_step as bench


def test_bench_step_quick(capsys):
    assert bench.main(["--quick", "--cases", "phase2", "--providers", "reference,skelfast", "--no-write",
                       "--no-memory", "--reps", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "phase2" in out and "reference" in out and "skelfast" in out
    assert "samples/s" in out and " h" in out


def test_bench_step_quick_finetune(capsys):
    """The fine-tuning step (linear6, all weights trained): both backends pass the first-step loss
    check (same initial weights) and get a time and a 100-epoch projection."""
    assert bench.main(["--quick", "--cases", "finetune", "--providers", "reference,skelfast", "--no-write",
                       "--no-memory", "--reps", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "finetune" in out and "rel. error" in out and "100 ep ->" in out
    assert "N=16,C=4" in out                              # no queue size in the fine-tuning shape
