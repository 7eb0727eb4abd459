"""Datasets for training: the prepared folder (or the embedded synthetic set), batches, seeded views.

Layer: training. Batches are gathered straight from the memory-mapped arrays of
`skelfast.data.PretrainFeeder(augment=False)` / `EvalFeeder` and augmented on the training device
with `skelfast.data.augment` (method.md §2), from a torch.Generator re-seeded from
(seed, epoch, step). The sample order of an epoch comes from (seed, epoch). So every batch is a
pure function of (seed, epoch, step): resuming mid-epoch is bit-exact without replaying anything,
and every DDP rank can draw the parameters of the *global* batch and keep its own slice.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from ..data import EvalFeeder, PretrainFeeder, PrepareError, load_manifest
from ..data.augment import apply_augment_params, sample_augment_params
from .config import _expand_dotted, merge

__all__ = ["DataError", "Split", "resolve_data_root", "evaluation_data", "open_split", "epoch_order", "step_generator",
           "two_views", "augment_one"]


class DataError(ValueError):
    """The data folder is missing, unprepared or does not fit the config."""


@dataclass
class Split:
    """One split as arrays: data (Ns, 3, T, V, M) float32 memmap, labels/frames int64 (Ns,).

    data_sha256: the prepared data file's sha256 from its manifest when `data` is that whole file
    (open_split), else None (a subset, or arrays built in memory); feature caches key on it."""

    name: str
    data: np.ndarray
    labels: np.ndarray
    frames: np.ndarray
    num_classes: int
    data_sha256: Optional[str] = None

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def batch(self, idx: np.ndarray, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Samples `idx` (in that order) -> x (B, 3, T, V, M) float32, labels (B,), frames (B,) on device."""
        x = torch.from_numpy(np.ascontiguousarray(self.data[np.asarray(idx)], dtype=np.float32))
        y = torch.from_numpy(self.labels[idx])
        f = torch.from_numpy(self.frames[idx])
        return x.to(device), y.to(device), f.to(device)


# What names a dataset in a config: evaluations inherit these from the checkpoint's run (not
# synthetic.cache_dir: where the generated copy lives is this machine's business).
DATASET_KEYS = ("root", "benchmark")
SYNTHETIC_DATASET_KEYS = ("num_classes", "samples_per_class", "seed", "noise")


def evaluation_data(cfg: Dict[str, Any], ck: Mapping[str, Any],
                    doing: str = "evaluating on the checkpoint's data") -> Optional[str]:
    """Linear / k-NN / fine-tuning (and distillation, on its teacher's) run on the data their
    checkpoint was trained on: with data.root null and data.from_checkpoint true (the default), the
    checkpoint run's data.root, benchmark and synthetic dataset settings replace the config's, so an NTU checkpoint is not evaluated on the
    embedded synthetic set by default. An explicit data.root (--data) or from_checkpoint=false keeps
    the config's. Changes cfg in place; returns a log line naming what was taken, or None."""
    d, src = cfg["data"], ck["config"]["data"]
    if d["root"] or not d.get("from_checkpoint", True):
        return None
    taken = {f"data.{k}": src[k] for k in DATASET_KEYS if k in src and src[k] != d[k]}
    syn = src.get("synthetic", {})
    taken.update({f"data.synthetic.{k}": syn[k] for k in SYNTHETIC_DATASET_KEYS
                  if k in syn and syn[k] != d["synthetic"][k]})
    if not taken:
        return None
    cfg["data"] = merge(d, _expand_dotted({k[len("data."):]: v for k, v in taken.items()}))
    root = taken.get("data.root")
    if root and not os.path.isdir(os.path.expanduser(root)):
        raise DataError(f"the checkpoint {ck.get('path', '')} was trained on data.root={root!r}, which does not "
                        f"exist here (data.from_checkpoint takes it by default): give the prepared folder with "
                        f"--data DIR, or --set data.from_checkpoint=false for the config's data")
    return f"{doing} (data.from_checkpoint): " + ", ".join(f"{k}={v}" for k, v in taken.items())


def resolve_data_root(cfg: Mapping[str, Any], log=None) -> str:
    """data.root if set (must hold a manifest; returned as an absolute path, so that a run's saved
    config names the same folder from any working directory), else the synthetic dataset
    (generated on first use)."""
    d = cfg["data"]
    if d["root"]:
        root = os.path.abspath(os.path.expanduser(d["root"]))
        if not os.path.isdir(root):
            raise DataError(f"data.root={root!r} does not exist; prepare NTU data with "
                            f"`python -m skelfast.data prepare --raw RAW --out {root}`")
        try:
            man = load_manifest(root)
        except PrepareError as exc:
            raise DataError(f"data.root: {exc}") from None
        if man is None:
            if any(f.lower().endswith(".skeleton") for f in os.listdir(root)):
                raise DataError(f"data.root={root!r} holds raw .skeleton files; prepare them into another folder "
                                f"and train on that: `python -m skelfast.data prepare --raw {root} --out DIR --dataset "
                                f"ntu60|ntu120|synthetic --benchmark xsub|xview|xset|xsetup`, then --data DIR")
            raise DataError(f"data.root={root!r} was never prepared (no manifest.json, or an interrupted "
                            f"prepare); run `python -m skelfast.data prepare --raw RAW --out {root}`")
        return root
    from ..data import synthetic

    s = d["synthetic"]
    cache = s["cache_dir"] or os.environ.get("SKELFAST_DATA") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                              "skelfast")
    return synthetic.ensure_prepared(os.path.join(cache, "synthetic"), num_classes=s["num_classes"],
                                     samples_per_class=s["samples_per_class"], seed=s["seed"],
                                     benchmark=d["benchmark"], noise=s["noise"], log=log)


def check_split(manifest: Mapping[str, Any], root: str, split: str) -> None:
    """Raise DataError naming the split if the prepared folder's manifest has no such split."""
    if split not in manifest.get("splits", {}):
        raise DataError(f"{root!r} has no split {split!r}; it has {sorted(manifest.get('splits', {}))}")


def open_split(root: str, split: str) -> Split:
    """Open `{root}/{split}_data.npy` + labels (frame counts included) as a Split."""
    man = load_manifest(root)
    if man is None:
        raise DataError(f"{root!r} was never prepared (no manifest.json)")
    check_split(man, root, split)
    # true_timeline=True: the raw frame counts F travel with every batch; each model decides whether
    # to use the time scale 50/F (method.md §3.1, §11 #14).
    ds = PretrainFeeder.from_prepared(root, split, augment=False, true_timeline=True)
    sha = man["splits"][split].get("files", {}).get("data", {}).get("sha256")
    return Split(split, ds.data, np.asarray(ds.label, dtype=np.int64), np.asarray(ds.frame, dtype=np.int64),
                 int(man["num_classes"]), sha)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled sample order of `epoch` (a pure function of seed and epoch), int64 (n,)."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g).numpy()


def step_generator(seed: int, epoch: int, step: int, salt: int = 0) -> torch.Generator:
    """A CPU generator for the augmentations of one step (seeded from seed, epoch, step)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(epoch)) * 100_003 + int(step) * 7 + salt)


def two_views(x: torch.Tensor, gen: torch.Generator, shear: float, crop_ratio: float, rank: int = 0,
              world: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """Two augmented views (method.md §1.4 Feeder_dual, §2) of the local slice x (b, 3, T, V, M).

    Parameters are drawn for the whole global batch B = b*world in the order of
    `skelfast.data.batched_two_views` (starts then shear matrices for 2B rows, view-major) and
    rank `rank` keeps rows of its slice, so a DDP run augments sample i exactly as a single
    process with the same global batch does.
    """
    b, T = x.shape[0], x.shape[2]
    B = b * world
    starts, mats = sample_augment_params(2 * B, T, gen, shear, crop_ratio)
    if shear <= 0 and crop_ratio <= 0:
        return x.clone(), x.clone()
    rows = torch.cat([torch.arange(rank * b, (rank + 1) * b), B + torch.arange(rank * b, (rank + 1) * b)])
    out = apply_augment_params(x, starts[rows].to(x.device), mats[rows].to(x.device), crop_ratio,
                               source=torch.arange(b, device=x.device).repeat(2))
    return out[:b], out[b:]


def augment_one(x: torch.Tensor, gen: torch.Generator, shear: float, crop_ratio: float, rank: int = 0,
                world: int = 1) -> torch.Tensor:
    """One augmented view of the local slice x (b, 3, T, V, M) (fine-tuning). As in two_views, the
    parameters are drawn for the global batch b*world and rank `rank` keeps its rows, so ranks do
    not share augmentations and a DDP run augments like one process on the global batch."""
    if shear <= 0 and crop_ratio <= 0:
        return x
    b = x.shape[0]
    starts, mats = sample_augment_params(b * world, x.shape[2], gen, shear, crop_ratio)
    rows = slice(rank * b, (rank + 1) * b)
    return apply_augment_params(x, starts[rows].to(x.device), mats[rows].to(x.device), crop_ratio)
