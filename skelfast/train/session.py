"""What every command does before training: processes, device, threads, seeds, data, run folder.

Layer: training. Everything that can be wrong with the inputs (config, data folder, checkpoint)
is checked here or in the command's setup, before the first step.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

from ..cpu_allocator import release_free_memory, tune_cpu_allocator
from ..data import load_manifest
from .checkpoint import load_checkpoint
from .data import Split, check_split, open_split, resolve_data_root
from .distributed import DistInfo, init_distributed
from .logging_utils import make_run_dir
from .loops import check_batch_fits, resolve_device

__all__ = ["Session", "start_session", "seed_everything", "resume_payload", "extend_schedule",
           "check_resume_value", "same_checkpoint"]


# the commands that evaluate on data.test_split (the others read data.train_split only)
TEST_SPLIT_COMMANDS = ("linear", "knn", "finetune")


@dataclass
class Session:
    cfg: Dict[str, Any]
    info: DistInfo
    device: torch.device
    data_root: str
    run_dir: str


def seed_everything(seed: int) -> None:
    """Same seed on every rank: identical initial weights and queues everywhere (DDP contract)."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))
    random.seed(seed)


def resume_payload(path: Optional[str], command: str, epochs: Optional[int] = None) -> Optional[Dict[str, Any]]:
    """The checkpoint to resume (a file or a run folder), checked to be from `command`; with `epochs`,
    its schedule set to that many epochs in all (extend_schedule)."""
    if not path:
        return None
    ck = load_checkpoint(path, expect_commands=(command,))
    if epochs is not None:
        extend_schedule(ck, epochs)
    return ck


def extend_schedule(ck: Dict[str, Any], epochs: int) -> None:
    """`--resume RUN --epochs N`: the resumed run trains to N epochs in all (e.g. a finished run, longer).

    The learning-rate milestones, the pretraining phase switch, the data order and the augmentation
    draws depend on the epoch number only, never on the total, so the result equals a run started
    with N epochs (a fine-tuning run also evaluated the old last epoch). N below the epochs already
    begun would rewind the run: refused."""
    from .config import ConfigError
    begun = ck["epoch"] + (1 if ck["step"] else 0)
    if epochs < max(begun, 1):
        raise ConfigError(f"--resume {ck['path']}: --epochs {epochs} is fewer than the {begun} epoch(s) the run has "
                          f"already begun; a resumed run can only be extended")
    ck["config"]["optim"]["epochs"] = int(epochs)


def same_checkpoint(a: str, b: Optional[str]) -> bool:
    """Whether two checkpoint arguments (files or run folders) name the same file."""
    from .checkpoint import resolve_checkpoint
    if not b:
        return False
    try:
        return os.path.samefile(resolve_checkpoint(a), resolve_checkpoint(b))
    except (OSError, ValueError):
        return os.path.abspath(a) == os.path.abspath(b)


def check_resume_value(flag: str, given: Any, saved: Any, path: str, same=None) -> None:
    """--resume continues a run with its saved settings: a flag that asks for another value than the
    run used is an error rather than a silent switch mid-training (equal values are fine)."""
    from .config import ConfigError
    if given is None:
        return
    equal = same(given, saved) if same is not None else given == saved
    if not equal:
        raise ConfigError(f"--resume {path}: {flag} {given} differs from the resumed run's {saved!r}; a resumed run "
                          f"keeps its settings (drop {flag}, or start a new run to change it)")


def start_session(cfg: Dict[str, Any], command: str, model_name: str, run_dir: Optional[str] = None,
                  need_data: bool = True) -> Session:
    r = cfg["run"]
    info = init_distributed(r["device"], cfg["distributed"]["backend"])
    device = resolve_device(r["device"], info)
    if r["num_threads"]:
        torch.set_num_threads(int(r["num_threads"]))
    if r.get("tune_cpu_allocator", True):   # absent from configs saved before the key existed
        tune_cpu_allocator()
        release_free_memory()   # the previous command's (pipeline stage's) kept memory
    if r["amp"] == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("run.amp=bf16 but this GPU does not support bfloat16")
    if r.get("cuda_graphs") and device.type != "cuda":   # before the run folder exists (its name stays free)
        raise ValueError("--cuda-graphs needs a CUDA device")
    seed_everything(r["seed"])
    # the first run generates the synthetic set: say so (rank 0), it takes a while
    root = resolve_data_root(cfg, log=print if info.is_main else None) if need_data else ""
    man = load_manifest(root) if root else None
    if man is not None and cfg["data"]["root"]:
        # the saved config names the folder from anywhere, and the split it holds (data.benchmark
        # is the synthetic set's choice; a prepared folder carries its own)
        cfg["data"]["root"], cfg["data"]["benchmark"] = root, man["benchmark"]
    if man is not None:
        # the split names, and the Trainer's batch check from the manifest's counts, before the run
        # folder exists: a run that cannot start must not leave a folder behind (nor take its name)
        d = cfg["data"]
        for split in (d["train_split"],) + ((d["test_split"],) if command in TEST_SPLIT_COMMANDS else ()):
            check_split(man, root, split)
        count = man["splits"][d["train_split"]].get("count")
        if command in ("pretrain", "distill") and count is not None:
            check_batch_fits(d["batch_size"], count, d["train_split"])
    if run_dir is None:
        run_dir = make_run_dir(cfg, command, model_name) if info.is_main else ""
        if info.enabled and info.world > 1:
            import torch.distributed as dist
            obj = [run_dir]
            dist.broadcast_object_list(obj, src=0)
            run_dir = obj[0]
    os.makedirs(run_dir, exist_ok=True)
    return Session(cfg, info, device, root, run_dir)


def open_train_split(session: Session) -> Split:
    return open_split(session.data_root, session.cfg["data"]["train_split"])
