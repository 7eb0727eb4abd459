"""`python -m skelfast.train finetune --checkpoint CKPT [--label-fraction 0.01|0.1|1.0]`.

Layer: training. Fine-tuning and the semi-supervised protocol as the anchors report them
(AimCLR, CMD, MAMP): the pretrained backbones plus a fresh linear head per stream (the §7 model,
logit average for multi-stream views) are all trained with cross entropy, backbones in train mode,
with the pretraining augmentations (crop + shear, method.md §2) on a seeded per-class subset of the
training labels (label_fraction of every class, at least one sample per class; 1.0 = all). The
test split is evaluated every `finetune.eval_every` epochs and at the end; last and best top-1/top-5
are reported. Checkpoints and --resume work as for pretraining (train/loops.py).

A multi-stream view (all, 3views) fine-tunes its streams jointly through the averaged logit, so
each encoder's gradient is 1/S of the loss's. The anchors' multi-stream ("3s-") fine-tuning numbers
are late ensembles of streams fine-tuned one by one: for those, run one single-stream view each
(--view joint, motion, bone) and average the test scores.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_checkpoint
from .data import Split, augment_one, evaluation_data, open_split, step_generator
from .features import check_views, eval_model_from_checkpoint
from .linear import topk_accuracy
from .logging_utils import format_table, plot_table
from .loops import Task, Trainer, autocast
from .session import check_resume_value, resume_payload, same_checkpoint, start_session

__all__ = ["label_subset", "FinetuneTask", "run_finetune", "evaluate_logits"]

# model.* keys a fine-tuning run takes from its source checkpoint (the encoders' shapes, the time scale).
SOURCE_MODEL_KEYS = ("hidden_channels", "hidden_dim", "feature_dim", "true_timeline")


def label_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a seeded per-class subset: round(fraction * n_c) (>= 1) samples of class c."""
    if fraction >= 1.0:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n = max(1, int(round(fraction * len(idx))))
        keep.append(rng.choice(idx, size=n, replace=False))
    return np.sort(np.concatenate(keep))


def subset_split(split: Split, idx: np.ndarray) -> Split:
    whole = len(idx) == len(split)
    return Split(split.name, split.data if whole else split.data[idx], split.labels[idx], split.frames[idx],
                 split.num_classes, split.data_sha256 if whole else None)


@torch.no_grad()
def evaluate_logits(model, split: Split, device, view: str, batch_size: int, amp: str = "none") -> Dict[int, float]:
    model.eval()
    logits = []
    for lo in range(0, len(split), batch_size):
        idx = np.arange(lo, min(lo + batch_size, len(split)))
        x, _, f = split.batch(idx, device)
        with autocast(device, amp):
            logits.append(model(x, f, view=view).float().cpu())
    model.train()
    return topk_accuracy(torch.cat(logits), torch.from_numpy(split.labels))


class FinetuneTask(Task):
    command = "finetune"

    def __init__(self, cfg: Dict[str, Any], view: str, test: Split):
        self.cfg, self.view, self.test = cfg, view, test
        d = cfg["data"]
        self.shear, self.crop = d["shear_amplitude"], d["temporal_padding_ratio"]
        self.augment = cfg["finetune"]["augment"]
        self.seed, self.amp = cfg["run"]["seed"], cfg["run"]["amp"]
        self.curve = []
        self.world, self.rank = 1, 0

    def epoch_desc(self, epoch: int) -> str:
        return f"finetune epoch {epoch}"

    def step_loss(self, ddp_model, model, split, idx, epoch, step, device):
        x, y, f = split.batch(idx, device)
        if self.augment:
            x = augment_one(x, step_generator(self.seed, epoch, step, salt=1), self.shear, self.crop, self.rank,
                            self.world)
        with autocast(device, self.amp):
            logits = ddp_model(x, f, view=self.view)
        return {"loss": F.cross_entropy(logits.float(), y), "out": None}

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        ev = self.cfg["finetune"]["eval_every"]
        if epoch % ev and epoch != self.cfg["optim"]["epochs"]:
            return
        if not trainer.info.is_main:
            return
        acc = evaluate_logits(trainer.model, self.test, trainer.device, self.view, self.cfg["data"]["eval_batch_size"],
                              self.amp)
        self.curve.append({"epoch": epoch, "top1": acc[1], "top5": acc[5]})
        trainer.logger.scalar("test/top1", acc[1], epoch)
        trainer.logger.scalar("test/top5", acc[5], epoch)
        trainer.logger.log(f"  test top-1 {acc[1]:.2f}, top-5 {acc[5]:.2f}")

    def extra_state(self):
        return {"curve": self.curve}

    def load_extra_state(self, state):
        self.curve = list(state.get("curve", []))


def run_finetune(cfg: Dict[str, Any], checkpoint: Optional[str] = None, view: Optional[str] = None,
                 resume: Optional[str] = None, run_dir: Optional[str] = None,
                 label_fraction: Optional[float] = None, epochs: Optional[int] = None) -> Dict[str, Any]:
    """Fine-tune `checkpoint` (or cfg finetune.checkpoint) on `view` with `label_fraction` of the labels
    (None = the config's); on `resume` the saved run's values hold and different ones are an error,
    except `epochs` (epochs in all: a longer schedule)."""
    ck_resume = resume_payload(resume, "finetune", epochs)
    if ck_resume is not None:
        cfg = ck_resume["config"]
        run_dir = run_dir or os.path.dirname(os.path.abspath(ck_resume["path"]))
        fc = cfg["finetune"]
        # the saved run's checkpoint / view / labels hold; another value would switch them mid-training
        check_resume_value("--checkpoint", checkpoint, fc["checkpoint"], resume, same_checkpoint)
        check_resume_value("--view", view, fc["view"], resume)
        check_resume_value("--label-fraction", label_fraction, fc["label_fraction"], resume)
    elif label_fraction is not None:
        cfg["finetune"]["label_fraction"] = label_fraction
    fc = cfg["finetune"]
    checkpoint = checkpoint or fc["checkpoint"]
    view = fc["view"] if view is None else view       # an empty --view is refused by check_views
    if not checkpoint:
        raise ValueError("finetune needs --checkpoint CKPT (a pretrain or distill checkpoint or run folder)")
    src = load_checkpoint(checkpoint, expect_commands=("pretrain", "distill"))
    check_views(src, [view])
    fc["checkpoint"], fc["view"] = src["path"], view
    # The encoders are the source's: its architecture and time scale go into this run's config,
    # which is what linear / knn / the Embedder build the fine-tuned model from later. Dropout stays
    # this run's (a fine-tuning setting, like the learning rate).
    taken = {k: src["config"]["model"][k] for k in SOURCE_MODEL_KEYS if cfg["model"][k] != src["config"]["model"][k]}
    cfg["model"].update(taken)
    data_note = evaluation_data(cfg, src)
    sess = start_session(cfg, "finetune", src["model_name"], run_dir)
    d = cfg["data"]
    train_full, test = open_split(sess.data_root, d["train_split"]), open_split(sess.data_root, d["test_split"])
    # only the view's encoders: what fine-tuning trains (skelfast's batched encoders run all theirs)
    model, source = eval_model_from_checkpoint(src, train_full.num_classes, cfg["model"]["backend"],
                                               model_cfg=cfg["model"], train_backbone=True, view=view)
    keep = label_subset(train_full.labels, fc["label_fraction"], fc["subset_seed"])
    train = subset_split(train_full, keep)
    if len(train) < d["batch_size"]:
        # a 1% subset can be smaller than a batch: shrink the batch rather than train on nothing
        # (to a multiple of the DDP world size: each rank takes an equal share of a global batch)
        d["batch_size"] = len(train) // sess.info.world * sess.info.world
        if d["batch_size"] == 0:
            raise ValueError(f"the labelled subset has {len(train)} samples, fewer than the {sess.info.world} "
                             f"DDP processes; raise finetune.label_fraction or use fewer processes")
    task = FinetuneTask(cfg, view, test)
    task.world, task.rank = sess.info.world, sess.info.rank
    trainer = Trainer(cfg, task, model, f"finetune:{source}", train, sess.run_dir, sess.device, sess.info,
                      resume=ck_resume, meta={"labels_used": int(len(keep))})
    if data_note:
        trainer.logger.log(data_note)
    if taken and ck_resume is None:
        trainer.logger.log("the checkpoint's encoders: " + ", ".join(f"model.{k}={v}" for k, v in taken.items()))
    res = trainer.fit()
    if sess.info.is_main and task.curve and not res["interrupted"]:
        last = task.curve[-1]
        best = max(task.curve, key=lambda c: c["top1"])
        row = {"model": source, "view": view, "labels": f"{len(keep)}/{len(train_full)}",
               "last top-1": last["top1"], "best top-1": best["top1"], "last top-5": last["top5"],
               "top-5 @ best": best["top5"]}
        print(format_table([row], list(row)))
        with open(os.path.join(sess.run_dir, "results.json"), "w") as fh:
            json.dump(dict(row, curve=task.curve, checkpoint=src["path"]), fh, indent=1)
        if cfg["run"]["plots"]:
            plot_table([row], list(row), os.path.join(sess.run_dir, "accuracy.png"), "fine-tuning (%)")
        res.update(last_top1=last["top1"], best_top1=best["top1"], last_top5=last["top5"], best_top5=best["top5"])
    return res
