"""Checkpoints: Ctrl-C mid-epoch saves and exits cleanly, --resume continues bit-for-bit (CPU), and
a crash while writing never corrupts last.pt."""
import json
import os
import signal

import numpy as np
import pytest
import torch

from skelfast.train import checkpoint as ckmod
from skelfast.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from skelfast.train.config import load_config
from skelfast.train.pretrain import PretrainTask, run_pretrain


def _cfg(tiny, name):
    # dropout on, so the restored torch RNG state matters; phase 2 from epoch 2 (the phase switch
    # happens after the resume point); 2 steps per epoch
    sets = tiny(**{"model.dropout": 0.3, "pretrain.cross_epoch": 1, "optim.epochs": 3, "optim.step": [2],
                   "run.max_steps_per_epoch": 2, "run.name": name, "run.plots": False})
    return load_config("ikem6", sets)


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), f"{k} differs"
        else:
            assert a[k] == b[k], k


def test_ctrl_c_then_resume_is_bit_exact(tiny, monkeypatch):
    full = run_pretrain(_cfg(tiny, "full"))
    assert not full["interrupted"]

    orig = PretrainTask.after_step
    count = {"n": 0}

    def interrupting(self, model, result, info):
        orig(self, model, result, info)
        count["n"] += 1
        if count["n"] == 3:                     # epoch 2, after its first step (mid-epoch)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(PretrainTask, "after_step", interrupting)
    before = signal.getsignal(signal.SIGINT)    # default_int_handler, or SIG_IGN in a background job
    part = run_pretrain(_cfg(tiny, "part"))
    assert part["interrupted"]
    ck = load_checkpoint(part["run_dir"])
    assert (ck["epoch"], ck["step"], ck["global_step"]) == (1, 1, 3)
    assert signal.getsignal(signal.SIGINT) is before   # handler restored
    monkeypatch.setattr(PretrainTask, "after_step", orig)

    # a process killed after its last checkpoint (kill -9) leaves later scalars in metrics.jsonl
    metrics = os.path.join(part["run_dir"], "metrics.jsonl")
    with open(metrics, "a") as f:
        f.write(json.dumps({"tag": "train/loss", "value": 123.0, "step": 4}) + "\n")
    res = run_pretrain(None, resume=part["run_dir"])
    assert not res["interrupted"]
    a, b = load_checkpoint(full["checkpoint"]), load_checkpoint(res["checkpoint"])
    assert (b["epoch"], b["step"], b["global_step"]) == (3, 0, 6)
    _assert_same_state(a["model"], b["model"])           # weights, BN stats, queues, queue pointers
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"])
    # the loss history of the resumed run continues the interrupted one step for step
    la = [h["value"] for h in a["history"] if h["tag"] == "train/loss"]
    lb = [h["value"] for h in b["history"] if h["tag"] == "train/loss"]
    assert la == lb and len(la) == 6
    # metrics.jsonl holds the resumed run's history once: the stale step-4 record is gone
    with open(metrics) as f:
        assert [json.loads(line) for line in f] == b["history"]


def test_resume_with_more_epochs_equals_the_longer_run(tiny, capsys):
    """--resume RUN --epochs N extends a finished run: a 1-epoch run (phase 1 only) resumed to 3
    epochs (phase 2 and the lr milestone after the resume point) is bit-for-bit the 3-epoch run."""
    from skelfast.train.__main__ import main
    full = run_pretrain(_cfg(tiny, "full3"))
    short_cfg = _cfg(tiny, "short")
    short_cfg["optim"]["epochs"] = 1
    short = run_pretrain(short_cfg)
    assert load_checkpoint(short["run_dir"])["epoch"] == 1
    assert main(["pretrain", "--resume", short["run_dir"], "--epochs", "3"]) == 0
    a, b = load_checkpoint(full["checkpoint"]), load_checkpoint(short["run_dir"])
    assert (b["epoch"], b["global_step"]) == (3, 6) and b["config"]["optim"]["epochs"] == 3
    _assert_same_state(a["model"], b["model"])
    for k, st in a["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    assert [h["value"] for h in a["history"] if h["tag"] == "train/loss"] == \
        [h["value"] for h in b["history"] if h["tag"] == "train/loss"]
    capsys.readouterr()
    # fewer epochs than the run has begun would rewind it; other changes stay refused
    assert main(["pretrain", "--resume", short["run_dir"], "--epochs", "2"]) == 2
    assert "fewer than the 3 epoch(s) the run has already begun" in capsys.readouterr().err
    assert main(["pretrain", "--resume", short["run_dir"], "--epochs", "4", "--set", "optim.lr=0.5"]) == 2
    assert "other than --epochs N" in capsys.readouterr().err


def test_atomic_save_survives_a_crash(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    save_checkpoint(path, {"command": "pretrain", "model_name": "ikem6", "config": {}, "model": {"w": torch.ones(3)}})

    def crashing_save(obj, fh, *a, **k):
        fh.write(b"half a checkpoint")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ckmod.torch, "save", crashing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"command": "pretrain", "model_name": "ikem6", "config": {}, "model": {}})
    monkeypatch.undo()
    ck = load_checkpoint(path)
    assert torch.equal(ck["model"]["w"], torch.ones(3))
    assert [f for f in os.listdir(tmp_path) if f != "last.pt"] == []      # no temp file left behind


def test_load_checks_kind(tmp_path):
    path = str(tmp_path / "c.pt")
    save_checkpoint(path, {"command": "distill", "model_name": "student6to3", "config": {}, "model": {}})
    with pytest.raises(CheckpointError, match="student6to3"):
        load_checkpoint(path, expect_models=("ikem6",))
    with pytest.raises(CheckpointError, match="distill"):
        load_checkpoint(path, expect_commands=("pretrain",))
    # both wrong (a distillation run given as a teacher): named by its command, not its model
    with pytest.raises(CheckpointError, match="is a `distill` checkpoint"):
        load_checkpoint(path, expect_models=("ikem6",), expect_commands=("pretrain",))
    torch.save({"encoder_q.fc.weight": torch.zeros(1)}, tmp_path / "official.pt")
    with pytest.raises(CheckpointError, match="not a skelfast training checkpoint"):
        load_checkpoint(str(tmp_path / "official.pt"))
    torch.save({"format": ckmod.FORMAT, "command": "pretrain"}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="damaged skelfast checkpoint, it lacks model_name, config, model"):
        load_checkpoint(str(tmp_path / "partial.pt"))
    (tmp_path / "garbage.pt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(str(tmp_path / "garbage.pt"))


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):      # an unrestricted torch.load would call os.makedirs(marker)
        return (os.makedirs, (self.marker,))


def test_loading_a_checkpoint_runs_no_code_from_it(tmp_path):
    """load_checkpoint (behind Embedder.from_checkpoint, --resume, --teacher) used weights_only=False,
    so a crafted file ran code when opened. Now only tensors, plain values and NumPy's RNG state load."""
    from skelfast.train.checkpoint import FORMAT, rng_state
    marker = str(tmp_path / "code_ran")
    path = str(tmp_path / "evil.pt")
    torch.save({"format": FORMAT, "command": "pretrain", "model_name": "ikem6", "config": {}, "model": {},
                "evil": _RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(CheckpointError, match="holds posix.makedirs|holds os.makedirs"):
        load_checkpoint(path)
    assert not os.path.exists(marker)
    good = str(tmp_path / "good.pt")     # what the Trainer writes, RNG states included, still loads
    save_checkpoint(good, {"command": "pretrain", "model_name": "ikem6", "config": {"a": [1, 2.5, None]},
                           "model": {"w": torch.ones(2)}, "rng": rng_state(), "history": {"loss": [1.0]}})
    ck = load_checkpoint(good)
    assert ck["rng"]["numpy"][1].dtype == np.uint32 and torch.equal(ck["model"]["w"], torch.ones(2))


def test_resume_with_another_backend_names_the_backend(tiny, tmp_path):
    """Model weights are interchangeable between backends, the optimiser state is not (it follows
    the parameter tensors: stacked on 'skelfast', per encoder on 'reference'). Resuming uses the
    checkpoint's config; a checkpoint whose config names another backend than its optimiser state
    was saved with gets a clear error."""
    sets = tiny(**{"optim.epochs": 1, "run.max_steps_per_epoch": 1, "run.name": "b", "run.plots": False,
                   "model.backend": "reference"})
    first = run_pretrain(load_config("ikem6", sets))
    ck = load_checkpoint(first["checkpoint"])
    ck["config"]["model"]["backend"] = "skelfast"
    ck["config"]["optim"]["epochs"] = 2
    path = str(tmp_path / "edited.pt")
    save_checkpoint(path, ck)
    with pytest.raises(CheckpointError, match="optimiser state .* model.backend='skelfast'"):
        run_pretrain(None, resume=path)
