"""The epoch/step loop shared by pretraining, distillation and fine-tuning.

Layer: training. One `Trainer` runs SGD with the official step decay (method.md §5.2:
lr = base * gamma^#{milestones < epoch}, evaluated at the start of each 1-based epoch), over
global batches that are pure functions of (seed, epoch, step) (see train/data.py), with:

* checkpoints at every epoch end (`last.pt`), every `run.save_every` epochs (`epoch_XXXX.pt`) and
  on Ctrl-C (mid-epoch, at a step boundary), written atomically (train/checkpoint.py);
* `--resume` restoring model (queues + host pointers), optimiser, RNG states, epoch and step, so a
  resumed CPU run is bit-for-bit the run that was not interrupted;
* rank-0 logging (tqdm with loss and samples/s, train.log, TensorBoard, metrics.jsonl) and a loss
  plot at the end;
* DDP through train/distributed.py, bf16 autocast, torch.compile / CUDA graphs of the encoders.

Task-specific work is delegated to a `Task` (pretrain.py, distill.py, finetune.py).
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import save_config
from .data import Split, epoch_order, step_generator
from .distributed import DistInfo, any_flag, barrier, wrap_ddp
from .logging_utils import RunLogger, plot_losses, progress

__all__ = ["Task", "Trainer", "TrainingError", "lr_at", "resolve_device", "autocast", "compile_encoders"]


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, ...)."""


def non_finite_loss_message(loss: float, epoch: int, step: int, lr: float, split, idx) -> str:
    """Why a step's loss is not finite: the batch's samples if they hold non-finite values (a
    damaged prepared folder, which training does not checksum), else the learning rate."""
    bad = [int(i) for i in idx if not np.isfinite(split.data[int(i)]).all()]
    where = f"non-finite loss {loss} at epoch {epoch} step {step}"
    if bad:
        return (f"{where}: samples {bad[:5]}{' ...' if len(bad) > 5 else ''} of split '{split.name}' hold "
                f"non-finite values; check the data folder with `python -m skelfast.data prepare --verify "
                f"--out DIR`")
    return f"{where}; lower optim.lr (now {lr}), or check the data"


def lr_at(base: float, epoch: int, milestones, gamma: float) -> float:
    """method.md §5.2 step decay at 1-based `epoch`: base * gamma^#{m in milestones : m < epoch}."""
    return base * gamma ** sum(1 for m in milestones if epoch > m)


def resolve_device(pref: str, info: Optional[DistInfo] = None) -> torch.device:
    if pref == "auto":
        pref = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(pref)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"run.device={pref!r} but CUDA is not available")
        if info is not None and info.enabled and dev.index is None:
            dev = torch.device("cuda", info.local_rank)
    return dev


def check_batch_fits(batch_size: int, samples: int, split: str) -> None:
    """A split smaller than one batch trains on nothing: batches are dropped when incomplete."""
    if samples < batch_size:
        raise ValueError(f"data.batch_size={batch_size} is larger than the {samples} samples of split "
                         f"{split!r} (batches are dropped when incomplete, method.md §1.4)")


def autocast(device: torch.device, amp: str):
    """bf16 autocast (run.amp='bf16') or a no-op."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compile_encoders(model: nn.Module, device: torch.device, compile_: bool, cuda_graphs: bool) -> None:
    """torch.compile every ST-GCN encoder (reference or batched) in place (nn.Module.compile keeps the state-dict keys, so
    checkpoints are unaffected). cuda_graphs uses mode 'reduce-overhead' (GPU only)."""
    if cuda_graphs and device.type != "cuda":
        raise ValueError("--cuda-graphs needs a CUDA device")
    if not (compile_ or cuda_graphs):
        return
    from ..nn import BatchedSTGCN
    from ..reference.stgcn import STGCN
    mode = "reduce-overhead" if cuda_graphs else None
    for m in model.modules():
        if isinstance(m, (STGCN, BatchedSTGCN)):
            m.compile(mode=mode)


class Task:
    """What one command trains. Subclasses implement `step_loss` and optionally the hooks."""

    command = "task"
    total_label = "loss"
    # Whether some trainable parameter gets no gradient in some step (DDP must then search the
    # graph every step: find_unused_parameters). Pretraining's IKEM heads idle in phase 1.
    unused_parameters = False

    def trainable(self, model: nn.Module) -> List[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def step_loss(self, ddp_model: nn.Module, model: nn.Module, split: Split, idx, epoch: int, step: int,
                  device: torch.device) -> Dict[str, Any]:
        """-> {'loss': scalar tensor, 'logs': {name: float}, 'out': model output}."""
        raise NotImplementedError

    def after_step(self, model: nn.Module, result: Dict[str, Any], info: DistInfo) -> None:
        """E.g. enqueue the gathered keys (after the optimiser step)."""

    def epoch_desc(self, epoch: int) -> str:
        return f"epoch {epoch}"

    def on_epoch_end(self, trainer: "Trainer", epoch: int) -> None:
        """E.g. evaluate (fine-tuning)."""

    def extra_state(self) -> Dict[str, Any]:
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        pass


class Trainer:
    """Runs `task` on `model` over `split` as configured in `cfg`; see the module docstring."""

    def __init__(self, cfg: Dict[str, Any], task: Task, model: nn.Module, model_name: str, split: Split,
                 run_dir: str, device: torch.device, info: DistInfo, resume: Optional[Dict[str, Any]] = None,
                 meta: Optional[Dict[str, Any]] = None):
        self.cfg, self.task, self.model, self.model_name = cfg, task, model, model_name
        self.split, self.run_dir, self.device, self.info = split, run_dir, device, info
        self.meta = dict(meta or {})
        o, d, r = cfg["optim"], cfg["data"], cfg["run"]
        self.B = d["batch_size"]
        if self.B % info.world:
            raise ValueError(f"data.batch_size={self.B} is not divisible by the {info.world} DDP processes")
        self.b = self.B // info.world
        check_batch_fits(self.B, len(split), split.name)
        self.steps_per_epoch = len(split) // self.B
        if r["max_steps_per_epoch"]:
            self.steps_per_epoch = min(self.steps_per_epoch, int(r["max_steps_per_epoch"]))
        self.epochs, self.seed = o["epochs"], r["seed"]
        model.to(device)
        self.optimizer = torch.optim.SGD(task.trainable(model), lr=o["lr"], momentum=o["momentum"],
                                         nesterov=o["nesterov"], weight_decay=o["weight_decay"])
        self.epoch, self.step, self.global_step = 0, 0, 0   # epochs completed, steps into the next
        # loss sum / steps of the epoch in progress: saved mid-epoch, so that the logged epoch mean of a
        # resumed epoch covers all its steps, not only those after the resume
        self.epoch_loss_sum, self.epoch_loss_n = 0.0, 0
        history = None
        if resume is not None:
            model.load_state_dict(resume["model"])
            try:
                self.optimizer.load_state_dict(resume["optimizer"])
            except ValueError as e:
                raise CheckpointError(
                    f"the optimiser state of {resume.get('path', 'the checkpoint')} does not fit the parameters of "
                    f"model.backend={cfg['model']['backend']!r} ({e}). The optimiser state follows the parameter "
                    f"tensors, which differ between backends (stacked encoders on 'skelfast', one per modality on "
                    f"'reference'): it was saved by the other backend") from e
            self.epoch, self.step, self.global_step = resume["epoch"], resume["step"], resume["global_step"]
            if self.step:
                el = resume.get("epoch_loss") or {}
                self.epoch_loss_sum, self.epoch_loss_n = float(el.get("sum", 0.0)), int(el.get("n", 0))
            history = resume.get("history")
            task.load_extra_state(resume.get("task_state", {}))
            set_rng_state(resume["rng"])
        self.logger = RunLogger(run_dir, enabled=info.is_main, tensorboard=r["tensorboard"], history=history,
                                resume_step=None if resume is None else self.global_step)
        if info.is_main:
            save_config(cfg, run_dir)
        compile_encoders(model, device, r["compile"], r["cuda_graphs"])
        self.ddp_model = wrap_ddp(model, info, device, cfg["distributed"]["sync_bn"], task.unused_parameters)
        self._stop = False

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_payload(self) -> Dict[str, Any]:
        return {"command": self.task.command, "model_name": self.model_name, "config": self.cfg,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "step": self.step, "global_step": self.global_step, "rng": rng_state(),
                "history": self.logger.history, "task_state": self.task.extra_state(), "meta": self.meta,
                "epoch_loss": {"sum": self.epoch_loss_sum, "n": self.epoch_loss_n}}

    def save(self, numbered: bool = False) -> Optional[str]:
        path = None
        if self.info.is_main:
            payload = self.checkpoint_payload()
            path = save_checkpoint(os.path.join(self.run_dir, "last.pt"), payload)
            if numbered:
                save_checkpoint(os.path.join(self.run_dir, f"epoch_{self.epoch:04d}.pt"), payload)
        barrier(self.info)
        return path

    # ---------------------------------------------------------------- Ctrl-C
    def _on_sigint(self, signum, frame):
        if self._stop:                       # a second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self._stop = True
        if self.info.is_main:
            print("\nCtrl-C: finishing this step, saving last.pt and exiting (Ctrl-C again to abort)", flush=True)

    # ---------------------------------------------------------------- loop
    def fit(self) -> Dict[str, Any]:
        """Train until optim.epochs; returns {'run_dir', 'checkpoint', 'interrupted', 'history'}."""
        r, o = self.cfg["run"], self.cfg["optim"]
        log = self.logger.log
        if self.epoch == 0 and self.step == 0:
            name = self.model_name.removeprefix(f"{self.task.command}:")    # 'finetune:ikem6' -> 'ikem6'
            log(f"{self.task.command} {name}: {len(self.split)} samples, global batch {self.B}"
                f" ({self.info.world} process(es)), {self.steps_per_epoch} steps/epoch, {self.epochs} "
                f"epoch{'s' if self.epochs != 1 else ''}, "
                f"device {self.device}, run folder {self.run_dir}")
        elif self.epoch >= self.epochs:
            log(f"{self.task.command} {self.model_name}: the resumed run already finished its {self.epochs} epochs; "
                f"nothing to train (to train it longer: --resume with --epochs N)")
        else:
            log(f"resuming {self.task.command} {self.model_name} in epoch {self.epoch + 1} after step {self.step}")
        old = None
        try:
            old = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:                   # not the main thread
            pass
        interrupted = False
        try:
            while self.epoch < self.epochs:
                e = self.epoch + 1            # 1-based processor epoch (method.md §5.2)
                lr = lr_at(o["lr"], e, o["step"], o["gamma"])
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                self.ddp_model.train()
                order = epoch_order(len(self.split), self.seed, e)
                bar = progress(self.steps_per_epoch, f"{self.task.epoch_desc(e)}/{self.epochs}",
                               self.info.is_main and r["progress"], initial=self.step)
                t_epoch, n_done = time.perf_counter(), 0          # n_done: steps run by this process (speed)
                if self.step == 0:
                    self.epoch_loss_sum, self.epoch_loss_n = 0.0, 0
                while self.step < self.steps_per_epoch:
                    s = self.step
                    t0 = time.perf_counter()
                    lo = s * self.B + self.info.rank * self.b
                    idx = order[lo:lo + self.b]
                    res = self.task.step_loss(self.ddp_model, self.model, self.split, idx, e, s, self.device)
                    loss = res["loss"]
                    if not torch.isfinite(loss.detach()).all():
                        raise TrainingError(non_finite_loss_message(loss.item(), e, s, lr, self.split, idx))
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    self.task.after_step(self.model, res, self.info)
                    self.step += 1
                    self.global_step += 1
                    dt = time.perf_counter() - t0
                    lv = float(loss.detach())
                    self.epoch_loss_sum += lv
                    self.epoch_loss_n += 1
                    n_done += 1
                    self.logger.scalar(f"train/{self.task.total_label}", lv, self.global_step)
                    for k, v in res.get("logs", {}).items():
                        self.logger.scalar(f"train/{k}", v, self.global_step)
                    bar.set_postfix(loss=f"{lv:.4f}", lr=f"{lr:g}", sps=f"{self.B / dt:.1f}")
                    bar.update(1)
                    if any_flag(self._stop, self.info):
                        interrupted = True
                        break
                bar.close()
                if interrupted:
                    break
                self.epoch, self.step = e, 0
                self.logger.scalar("train/lr", lr, self.global_step)
                secs = time.perf_counter() - t_epoch
                log(f"{self.task.epoch_desc(e)}/{self.epochs}: mean {self.task.total_label} "
                    f"{self.epoch_loss_sum / max(self.epoch_loss_n, 1):.4f}, lr {lr:g}, {secs:.1f}s "
                    f"({n_done * self.B / max(secs, 1e-9):.1f} samples/s)")
                self.task.on_epoch_end(self, e)
                self.save(numbered=(e % r["save_every"] == 0) or e == self.epochs)
            if interrupted:
                path = self.save()
                log(f"interrupted: saved {path} (epoch {self.epoch + 1} after step {self.step}); "
                    f"continue with --resume {self.run_dir}")
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)
        if self.info.is_main and r["plots"]:
            plot_losses(self.logger.history, os.path.join(self.run_dir, "loss.png"))
        self.logger.close()
        return {"run_dir": self.run_dir, "checkpoint": os.path.join(self.run_dir, "last.pt"),
                "interrupted": interrupted, "history": self.logger.history}
