"""DDP on CPU with 2 gloo processes (torch.multiprocessing.spawn).

Contracts (skelfast/train/distributed.py):
1. the real `pretrain` Trainer under DDP keeps every rank's queues, queue pointers and weights
   identical (keys are all-gathered before the enqueue);
2. with per-sample-independent layers (dropout 0, BN on running statistics) a 2-process run with
   per-rank batch b equals a single-process run with global batch 2b: same queues, same weights
   after a phase-1 and a phase-2 step.
"""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from skelfast.train.config import load_config
from skelfast.train.pretrain import PretrainTask, build_pretrain_trainer


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BNEvalTask(PretrainTask):
    """Pretraining with every BatchNorm on its running statistics (per-sample-independent forward)."""

    def step_loss(self, ddp_model, model, *args):
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        return super().step_loss(ddp_model, model, *args)


def _snapshot(trainer):
    m = trainer.model
    return {"queue": m.queues.queue.clone(), "ptr": m.queues.ptr,
            "params": {k: v.detach().clone() for k, v in m.state_dict().items() if isinstance(v, torch.Tensor)}}


def _worker(rank, world, port, sets, out_dir, bn_eval):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = load_config("ikem6", sets)
    tr = build_pretrain_trainer(cfg, task_cls=BNEvalTask if bn_eval else None)
    res = tr.fit()
    assert not res["interrupted"]
    torch.save(_snapshot(tr), os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def _sets(tiny, name, batch):
    return tiny(**{"data.batch_size": batch, "optim.epochs": 2, "pretrain.cross_epoch": 1,
                   "run.max_steps_per_epoch": 1, "run.name": name, "run.plots": False, "run.tensorboard": False})


def _spawn(sets, out_dir, bn_eval):
    mp.spawn(_worker, args=(2, _free_port(), sets, str(out_dir), bn_eval), nprocs=2, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_ddp_queues_identical_across_ranks(tiny, tmp_path):
    r0, r1 = _spawn(_sets(tiny, "ddp", 8), tmp_path, bn_eval=False)
    assert torch.equal(r0["queue"], r1["queue"])
    assert r0["ptr"] == r1["ptr"] == 16 % 32              # 2 steps of the global batch 8
    for k in r0["params"]:
        if "running" in k or "num_batches" in k:
            continue                                      # BN statistics are rank-local by design
        assert torch.equal(r0["params"][k], r1["params"][k]), k


def test_ddp_matches_single_process_same_global_batch(tiny, tmp_path):
    r0, r1 = _spawn(_sets(tiny, "ddp_eq", 8), tmp_path, bn_eval=True)
    torch.set_num_threads(1)
    single = build_pretrain_trainer(load_config("ikem6", _sets(tiny, "single", 8)), task_cls=BNEvalTask)
    init = _snapshot(single)["params"]
    single.fit()
    s = _snapshot(single)
    assert torch.equal(r0["queue"], r1["queue"])
    assert r0["ptr"] == s["ptr"] == 16
    # the gathered keys land in global-batch order: same queue as the single process
    torch.testing.assert_close(r0["queue"], s["queue"], atol=2e-5, rtol=1e-4)
    moved = []
    for k, v in s["params"].items():
        if k.startswith(("encoders_q", "ikem_heads")) and v.is_floating_point():
            # fp32 reduction order differs (gradients all-reduced vs one batch): relative tolerance
            torch.testing.assert_close(r0["params"][k], v, atol=1e-4, rtol=1e-3, msg=k)
            moved.append((v - init[k]).abs().max().item())
    # the runs trained: the weights moved by far more than the tolerance of the comparison
    assert moved and max(moved) > 1e-2


def test_torchrun_cli(tiny, tmp_path):
    """`torchrun --nproc_per_node 2 -m skelfast.train pretrain`: one shared run folder, rank-0 files,
    and none of DDP's warnings about our use of it. The encoders are the real width (16 hidden
    channels): their strided 1x1 residual convs over channels-last activations are what made DDP
    warn that gradient strides differ from its bucket views (distributed._grad_in_param_strides)."""
    import subprocess
    import sys
    sets = _sets(tiny, "trun", 8) + ["model.hidden_channels=16"]
    env = dict(os.environ, OMP_NUM_THREADS="1", SKELFAST_QUIET_IMPORT="1",
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))

    def torchrun(*args):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), "-m", "skelfast.train", *args] + sum([["--set", s] for s in sets], [])
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    proc = torchrun("pretrain")
    run = [s.split("=", 1)[1] for s in sets if s.startswith("run.out_dir=")][0]
    assert sorted(os.listdir(run)) == ["trun"]
    from skelfast.train.checkpoint import load_checkpoint
    ck = load_checkpoint(os.path.join(run, "trun"))
    assert ck["epoch"] == 2 and ck["model"]["queues._extra_state"]["ptr"] == 16
    assert proc.stdout.count("pretrain ikem6:") == 1          # rank 0 logs, once
    assert "Grad strides do not match bucket view strides" not in proc.stderr, proc.stderr[-3000:]
    assert "`broadcast_buffers` is deprecated" not in proc.stderr, proc.stderr[-3000:]
    # distillation and fine-tuning train every parameter in every step: DDP runs without its
    # per-step search for unused ones (which would warn), and would fail the second step otherwise
    sets = [s for s in sets if not s.startswith("run.name=")]
    teacher = os.path.join(run, "trun")
    for args in (["distill", "--teacher", teacher, "--name", "tdis"], ["finetune", "--checkpoint", teacher,
                                                                       "--view", "3views", "--name", "tft"]):
        proc = torchrun(*args)
        assert "find_unused_parameters=True was specified" not in proc.stderr, proc.stderr[-3000:]
        assert load_checkpoint(os.path.join(run, args[-1]))["global_step"] == 2


@pytest.mark.parametrize("views", [2, 1], ids=["two_views", "augment_one"])
def test_rank_slices_augment_like_one_process(views):
    """Each rank augments its slice of the global batch exactly as one process augments that batch
    (pretraining/distillation's two views and fine-tuning's one view): ranks never share a draw."""
    from skelfast.train.data import augment_one, step_generator, two_views
    x = torch.randn(1, 3, 20, 25, 2).repeat(8, 1, 1, 1, 1)   # one sample 8 times: outputs differ by draw only

    def run(part, rank, world):
        gen = step_generator(0, 1, 3)
        if views == 2:
            return torch.cat(two_views(part, gen, 0.5, 6, rank, world))
        return augment_one(part, gen, 0.5, 6, rank, world)

    single = run(x, 0, 1)
    per_rank = [run(x[r * 4:(r + 1) * 4], r, 2) for r in range(2)]
    if views == 2:   # (v1, v2) per rank -> the single process's view-major layout
        per_rank = [torch.cat([p[:4] for p in per_rank]), torch.cat([p[4:] for p in per_rank])]
    torch.testing.assert_close(torch.cat(per_rank), single, rtol=0, atol=0)
    assert not torch.equal(single[0], single[4])    # rows 0 and 4 (one on each rank) got different draws


def test_grad_stride_hook_only_restrides_size_one_dims():
    """distributed._grad_in_param_strides: a gradient that differs from its parameter only in the
    strides of size-1 dims is re-strided without a copy; any other layout is left to autograd."""
    from skelfast.train.distributed import _grad_in_param_strides
    p = torch.zeros(8, 4, 1, 1, requires_grad=True)                       # strides (4, 1, 1, 1)
    hook = _grad_in_param_strides(p)
    g = torch.randn(8, 4, 1, 1).contiguous(memory_format=torch.channels_last)
    g = g.as_strided(g.shape, (4, 1, 4, 4))                              # what oneDNN returns
    out = hook(g)
    assert out.stride() == p.stride() and out.data_ptr() == g.data_ptr() and torch.equal(out, g)
    w = torch.zeros(8, 4, 3, 1, requires_grad=True)
    t = torch.randn(8, 4, 3, 1).contiguous(memory_format=torch.channels_last)   # other memory order
    assert _grad_in_param_strides(w)(t) is t
