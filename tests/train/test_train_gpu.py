"""The GPU switches of `python -m skelfast.train` (issue 7): --device cuda with --amp bf16,
--compile and --cuda-graphs, for pretraining (phase 1 then phase 2), distillation and linear
evaluation, on tiny synthetic data. Skipped without a CUDA device (tests/conftest.py)."""
import json
import os

import pytest
import torch

from skelfast.train.__main__ import main
from skelfast.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.cuda


def _sets(items):
    return sum([["--set", s] for s in items], [])


def _losses(run_dir):
    ck = load_checkpoint(run_dir)
    return ck, [h["value"] for h in ck["history"] if h["tag"] == "train/loss"]


@pytest.mark.parametrize("switches", [["--amp", "bf16"], ["--compile"], ["--cuda-graphs"],
                                      ["--amp", "bf16", "--cuda-graphs"]],
                         ids=["bf16", "compile", "cuda-graphs", "bf16+cuda-graphs"])
def test_pretrain_distill_linear_on_cuda(tiny, tmp_path, switches):
    name = "-".join(s.strip("-") for s in switches)
    sets = tiny(**{"optim.epochs": 2, "run.max_steps_per_epoch": 2, "pretrain.cross_epoch": 1,
                   "optim.step": "[1]", "run.plots": False})
    out = tmp_path / "runs"
    pre, dis, lin = str(out / f"pre-{name}"), str(out / f"dis-{name}"), str(out / f"lin-{name}")
    assert main(["pretrain", "--config", "ikem6", "--device", "cuda", *switches, "--name", f"pre-{name}",
                 *_sets(sets)]) == 0
    ck, loss = _losses(pre)
    run_cfg = ck["config"]["run"]
    assert run_cfg["device"] == "cuda"
    assert (run_cfg["amp"] == "bf16") == ("--amp" in switches)
    assert bool(run_cfg["compile"]) == ("--compile" in switches)
    assert bool(run_cfg["cuda_graphs"]) == ("--cuda-graphs" in switches)
    assert len(loss) == 4 and torch.isfinite(torch.tensor(loss)).all()   # 2 phase-1 + 2 phase-2 steps
    assert ck["global_step"] == 4 and ck["epoch"] == 2

    assert main(["distill", "--config", "student6to3", "--teacher", pre, "--device", "cuda", *switches,
                 "--name", f"dis-{name}", *_sets(tiny(**{"optim.epochs": 1, "run.max_steps_per_epoch": 2,
                                                         "run.plots": False}))]) == 0
    _, loss = _losses(dis)
    assert len(loss) == 2 and torch.isfinite(torch.tensor(loss)).all()

    assert main(["linear", "--checkpoint", dis, "--device", "cuda", *switches, "--name", f"lin-{name}",
                 "--epochs", "2", *_sets(tiny(**{"linear.eval_every": 1, "run.plots": False}))]) == 0
    res = json.load(open(os.path.join(lin, "results.json")))
    assert 0 <= res["last_top1"] <= 100 and len(res["curve"]) == 2


def test_cuda_run_matches_cpu_run_in_fp32(tiny, tmp_path):
    """The same tiny phase-1 run (fp32, dropout 0, no augmentation randomness difference: same
    seed) on CPU and on CUDA: the logged losses agree to fp32 accumulation-order noise."""
    runs = {}
    for dev in ("cpu", "cuda"):
        sets = tiny(**{"optim.epochs": 1, "run.max_steps_per_epoch": 2, "run.plots": False, "run.name": f"fp32-{dev}"})
        assert main(["pretrain", "--config", "ikem6", "--device", dev, *_sets(sets)]) == 0
        runs[dev] = _losses(str(tmp_path / "runs" / f"fp32-{dev}"))[1]
    assert len(runs["cpu"]) == 2
    torch.testing.assert_close(torch.tensor(runs["cuda"]), torch.tensor(runs["cpu"]), rtol=1e-3, atol=1e-3)
