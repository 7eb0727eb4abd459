"""`python -m skelfast.train distill --teacher CKPT`: relational cross-modal distillation (method.md §6).

Layer: training. student6to3 (§6.1: frozen 6-modality ikem6 teacher, three students j/m/b) or
student3to1 (§6.2: frozen crossclr3 teacher, one fused 9-channel student). The teacher's query
encoders come from a `pretrain` checkpoint of the matching model; students and queues start fresh.
Teacher queries (and t) are all-gathered from every DDP rank before they are enqueued.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Optional

import torch

from .checkpoint import CheckpointError, load_checkpoint
from .config import check_batch_queue
from .data import evaluation_data, step_generator, two_views
from .distributed import gather_cat
from .loops import Task, Trainer, autocast
from .models import DISTILL_MODELS, MODEL_DEFAULTS, TEACHER_OF, build_model
from .session import check_resume_value, open_train_split, resume_payload, same_checkpoint, start_session

__all__ = ["DistillTask", "run_distill", "load_teacher", "teacher_true_timeline"]

ARCH_KEYS = ("hidden_channels", "hidden_dim", "feature_dim")


def load_teacher(model, name: str, teacher_ck: Dict[str, Any]) -> None:
    """Copy the pretraining checkpoint's query encoders (with their 128-d heads) into model.teacher."""
    sd = teacher_ck["model"]
    n = 0
    target = model.teacher.state_dict()
    new = {}
    for k, v in sd.items():
        if k.startswith("encoders_q."):
            sub = k[len("encoders_q."):]
            if sub not in target:
                raise CheckpointError(f"teacher key encoders_q.{sub} has no place in the {name} teacher")
            if tuple(target[sub].shape) != tuple(v.shape):
                raise CheckpointError(f"teacher weight encoders_q.{sub} has shape {tuple(v.shape)}, the {name} "
                                      f"teacher expects {tuple(target[sub].shape)}")
            new[sub] = v
            n += 1
    missing = sorted(set(target) - set(new))
    if missing:
        raise CheckpointError(f"teacher checkpoint lacks {len(missing)} teacher weights, e.g. {missing[:3]}")
    model.teacher.load_state_dict(new)


def teacher_true_timeline(requested: Optional[bool], teacher_ck: Dict[str, Any]) -> bool:
    """The time scale (model.true_timeline) of the distillation model, which teacher and students
    share. null (the presets) takes the teacher's from pretraining: a frozen teacher fed another time
    scale than it was trained on sees differently scaled motion/acceleration inputs (method.md §11
    #14, recommendation: consistent). An explicit value is honoured, with a warning when it differs
    from the teacher's: that reproduces the official 3->1 run (ts_crossclr_3views.yaml leaves it True
    over a False teacher; `--set model.true_timeline=true`), the parity switch of method.md's rule 3."""
    tm = teacher_ck["config"]["model"]
    teacher_tt = tm.get("true_timeline")
    if teacher_tt is None:          # the teacher model's own default (crossclr3: False, ikem6: True)
        teacher_tt = MODEL_DEFAULTS[teacher_ck["model_name"]][1]["true_timeline"]
    if requested is None:
        return bool(teacher_tt)
    if bool(requested) != bool(teacher_tt):
        warnings.warn(f"model.true_timeline={requested} but the teacher {teacher_ck.get('path', '')} was pretrained "
                      f"with true_timeline={teacher_tt}: the frozen teacher sees inputs on another time scale than it "
                      f"was trained on (the official 3->1 quirk, method.md §11 #14); leave model.true_timeline null "
                      f"for the teacher's", stacklevel=2)
    return bool(requested)


class DistillTask(Task):
    command = "distill"

    def __init__(self, cfg: Dict[str, Any]):
        d = cfg["data"]
        self.shear, self.crop = d["shear_amplitude"], d["temporal_padding_ratio"]
        self.seed, self.amp = cfg["run"]["seed"], cfg["run"]["amp"]
        self.world, self.rank = 1, 0

    def epoch_desc(self, epoch: int) -> str:
        return f"distill epoch {epoch}"

    def step_loss(self, ddp_model, model, split, idx, epoch, step, device):
        x, _, frames = split.batch(idx, device)
        v1, v2 = two_views(x, step_generator(self.seed, epoch, step), self.shear, self.crop, self.rank, self.world)
        with autocast(device, self.amp):
            out = ddp_model(v1, v2, frames, enqueue=False)     # teacher on view 1, students on view 2 (§6.1)
        names = ("fused",) if model.fused_student else model.student_modalities
        logs = {f"loss_{m}": float(l) for m, l in zip(names, out["losses"].detach().reshape(-1))}
        return {"loss": out["loss"].float(), "out": out, "logs": logs}

    def after_step(self, model, result, info) -> None:
        # Queues hold teacher queries and t = nrm(concat q) (§6.1 'After the step'), global batch order.
        model.enqueue_(gather_cat(result["out"]["teacher_q"].detach().float(), info, dim=1))


def run_distill(cfg: Dict[str, Any], teacher: Optional[str] = None, resume: Optional[str] = None,
                run_dir: Optional[str] = None, epochs: Optional[int] = None) -> Dict[str, Any]:
    """Distil a pretraining checkpoint `teacher` into cfg['model']['name'] (student6to3 | student3to1),
    or continue `resume` (with `epochs` epochs in all if given)."""
    ck = resume_payload(resume, "distill", epochs)
    if ck is not None:
        cfg, run_dir = ck["config"], run_dir or os.path.dirname(os.path.abspath(ck["path"]))
        # the resumed students learn from the saved teacher; another one would switch it mid-training
        check_resume_value("--teacher", teacher, cfg["distill"]["teacher"], resume, same_checkpoint)
    name = cfg["model"]["name"]
    if name not in DISTILL_MODELS:
        raise CheckpointError(f"distill needs model.name in {DISTILL_MODELS}, got {name!r} (--config student6to3 "
                              "or student3to1, or --set model.name=...)")
    teacher = teacher or cfg["distill"]["teacher"]
    if ck is None:
        if not teacher:
            raise CheckpointError("distill needs a teacher: --teacher CKPT (a `pretrain` checkpoint)")
        tck = load_checkpoint(teacher, expect_models=(TEACHER_OF[name],), expect_commands=("pretrain",))
        cfg["distill"]["teacher"] = tck["path"]
        # The teacher architecture is the checkpoint's, whatever the distillation preset says.
        for k in ARCH_KEYS:
            cfg["model"][k] = tck["config"]["model"][k]
        cfg["model"]["true_timeline"] = teacher_true_timeline(cfg["model"]["true_timeline"], tck)
        # ... and so is the data, unless --data or data.from_checkpoint=false says otherwise
        data_note = evaluation_data(cfg, tck, "distilling on the teacher's data")
    check_batch_queue(cfg)          # before the run folder exists (build_model sizes the queues from cfg)
    sess = start_session(cfg, "distill", name, run_dir)
    model = build_model(cfg)
    if ck is None:
        load_teacher(model, name, tck)
    split = open_train_split(sess)
    task = DistillTask(cfg)
    task.world, task.rank = sess.info.world, sess.info.rank
    trainer = Trainer(cfg, task, model, name, split, sess.run_dir, sess.device, sess.info, resume=ck)
    if ck is None and data_note:
        trainer.logger.log(data_note)
    return trainer.fit()
