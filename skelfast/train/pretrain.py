"""`python -m skelfast.train pretrain`: phase 1 and phase 2 of method.md §5 (crossclr3 / ikem6).

Layer: training. Epochs 1..cross_epoch run phase 1 (separate InfoNCE per modality, §5.3), later
epochs phase 2 (cross-modal mined positives + IKEM, §5.4); the step follows §5.6 with the queue
update moved after the optimiser step (equivalent: the loss reads a snapshot of the queue) so that
keys can be all-gathered from every DDP rank first (train/distributed.py).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch

from .checkpoint import CheckpointError
from .config import check_batch_queue
from .data import two_views, step_generator
from .distributed import gather_cat
from .loops import Task, Trainer, autocast
from .models import DISTILL_MODELS, PRETRAIN_MODELS, build_model
from .session import open_train_split, resume_payload, start_session

__all__ = ["PretrainTask", "run_pretrain", "build_pretrain_trainer"]


class PretrainTask(Task):
    command = "pretrain"
    unused_parameters = True          # the IKEM heads get no gradient in phase 1 (method.md §5.2)

    def __init__(self, cfg: Dict[str, Any]):
        self.cfg = cfg
        self.cross_epoch = cfg["pretrain"]["cross_epoch"]
        d = cfg["data"]
        self.shear, self.crop = d["shear_amplitude"], d["temporal_padding_ratio"]
        self.seed, self.amp = cfg["run"]["seed"], cfg["run"]["amp"]
        self.world, self.rank = 1, 0

    def phase(self, epoch: int) -> int:
        return 1 if epoch <= self.cross_epoch else 2          # method.md §5.2

    def epoch_desc(self, epoch: int) -> str:
        return f"pretrain p{self.phase(epoch)} epoch {epoch}"

    def step_loss(self, ddp_model, model, split, idx, epoch, step, device):
        x, _, frames = split.batch(idx, device)
        v1, v2 = two_views(x, step_generator(self.seed, epoch, step), self.shear, self.crop, self.rank, self.world)
        with autocast(device, self.amp):
            out = ddp_model(v1, v2, frames, phase=self.phase(epoch), enqueue=False)
        logs = {f"loss_{m}": float(l) for m, l in zip(model.modalities, out["losses"].detach())}
        return {"loss": out["loss"].float(), "out": out, "logs": logs}

    def after_step(self, model, result, info) -> None:
        # All ranks enqueue the same global-batch keys (rank order) at the same pointer (§5.1, §5.6 step 7).
        model.enqueue_(gather_cat(result["out"]["k"].detach(), info, dim=1))


def build_pretrain_trainer(cfg: Optional[Dict[str, Any]], resume: Optional[str] = None,
                           run_dir: Optional[str] = None, task_cls=None, epochs: Optional[int] = None) -> Trainer:
    """Everything `pretrain` does before the first step (all input checks included) -> a Trainer.
    epochs: with `resume`, train to that many epochs in all (session.extend_schedule)."""
    ck = resume_payload(resume, "pretrain", epochs)
    if ck is not None:
        cfg, run_dir = ck["config"], run_dir or os.path.dirname(os.path.abspath(ck["path"]))
    name = cfg["model"]["name"]
    if name not in PRETRAIN_MODELS:
        raise CheckpointError(f"pretrain needs model.name in {PRETRAIN_MODELS}, got {name!r}"
                              + (f" (use `distill` for {name!r})" if name in DISTILL_MODELS else ""))
    check_batch_queue(cfg)          # before the run folder exists (build_model sizes the queues from cfg)
    sess = start_session(cfg, "pretrain", name, run_dir)
    model = build_model(cfg)
    split = open_train_split(sess)
    task = (task_cls or PretrainTask)(cfg)
    task.world, task.rank = sess.info.world, sess.info.rank
    return Trainer(cfg, task, model, name, split, sess.run_dir, sess.device, sess.info, resume=ck)


def run_pretrain(cfg: Optional[Dict[str, Any]], resume: Optional[str] = None,
                 run_dir: Optional[str] = None, epochs: Optional[int] = None) -> Dict[str, Any]:
    """Pretrain cfg['model']['name'] (crossclr3 | ikem6), or continue `resume` (a checkpoint or run
    folder; its saved config is used, with `epochs` epochs in all if given); returns Trainer.fit()'s result."""
    return build_pretrain_trainer(cfg, resume, run_dir, epochs=epochs).fit()
