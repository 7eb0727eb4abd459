"""Memory-mapped datasets over a prepared folder (method.md §1.4 `Feeder_dual` / `Feeder_single`).

Layer: data (torch.utils.data.Dataset over NumPy memmaps).

Samples are float32 (3, 50, 25, 2); labels int; `frame` is the raw frame count F (method.md §1.2)
if `true_timeline`, else 50 (time scale 1, §3.1).

Augmentation randomness is reproducible and independent of DataLoader workers: sample i of
epoch e (set with `set_epoch`) uses a NumPy generator seeded from (seed, e, i). (The official
worker re-seeding quirk of §1.4 / §11 #12 is deliberately not reproduced.)
"""
from __future__ import annotations

import json
import os
import pickle
from typing import List, Optional, Tuple

import numpy as np
import torch.utils.data

from .._scalars import is_int
from .augment import augment_sample, check_shear, crop_padding
from .preprocess import NUM_FRAMES

__all__ = ["load_labels", "PretrainFeeder", "EvalFeeder"]


def load_labels(path: str) -> Tuple[List[str], List[int], Optional[List[int]]]:
    """Read a label file: the gendata pickle 3-tuple (names, labels, frames) of method.md §1.2, a
    CrosSCLR 2-tuple (frames None), or the `{split}_label.json` written by `prepare`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"label file {path!r} does not exist")
    if path.endswith(".json"):
        try:
            with open(path) as fh:
                d = json.load(fh)
        except (ValueError, UnicodeDecodeError) as exc:   # JSONDecodeError is a ValueError without the path
            raise ValueError(f"{path}: unreadable label file ({type(exc).__name__}: {exc})") from None
        try:
            return list(d["sample_name"]), list(d["label"]), d.get("frame")
        except (KeyError, TypeError):
            raise ValueError(f"{path}: expected a JSON object with 'sample_name', 'label', 'frame'") from None
    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged pickle raises any of a dozen types, none naming the file
        raise ValueError(f"{path}: unreadable label file ({type(exc).__name__}: {exc})") from None
    if isinstance(obj, (tuple, list)) and len(obj) == 3:
        return list(obj[0]), list(obj[1]), list(obj[2])
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return list(obj[0]), list(obj[1]), None
    raise ValueError(f"{path}: expected a pickled (names, labels[, frames]) tuple")


def _check_counts(values, low: int, what: str, path: str) -> np.ndarray:
    """values as int64, each an integer >= low; a hand-made label file's 30.7, "30", 0 or -1 would
    otherwise be truncated or fail later, in a DataLoader worker or the modalities op."""
    bad = [v for v in values if not is_int(v) or v < low]
    if bad:
        raise ValueError(f"{path}: {what} must be integers >= {low}, got e.g. {bad[:3]!r}")
    return np.asarray(values, dtype=np.int64)


class _PreparedFeeder(torch.utils.data.Dataset):
    def __init__(self, data_path: str, label_path: str, true_timeline: bool = True, mmap: bool = True,
                 seed: int = 0):
        self.data_path, self.label_path = os.fspath(data_path), os.fspath(label_path)
        if not os.path.exists(self.data_path):
            raise FileNotFoundError(f"data file {self.data_path!r} does not exist")
        self.data = np.load(self.data_path, mmap_mode="r" if mmap else None)
        if self.data.ndim != 5 or self.data.shape[1] != 3:
            raise ValueError(f"{self.data_path}: expected (N, 3, T, V, M), got shape {self.data.shape}")
        self.sample_name, self.label, frames = load_labels(self.label_path)
        _check_counts(self.label, 0, "labels", self.label_path)
        if len(self.label) != self.data.shape[0] or len(self.sample_name) != self.data.shape[0]:
            raise ValueError(f"{self.label_path} has {len(self.label)} labels but {self.data_path} has "
                             f"{self.data.shape[0]} samples")
        if true_timeline:
            if frames is None:
                raise ValueError(f"{self.label_path} has no frame counts (a CrosSCLR 2-tuple?); "
                                 "use true_timeline=False")
            if len(frames) != self.data.shape[0]:
                raise ValueError(f"{self.label_path} has {len(frames)} frame counts but {self.data_path} has "
                                 f"{self.data.shape[0]} samples")
            self.frame = _check_counts(frames, 1, "frame counts", self.label_path)
        else:
            self.frame = np.full(self.data.shape[0], NUM_FRAMES, dtype=np.int64)
        self.true_timeline = true_timeline
        self.seed = seed
        # the epoch lives in shared memory: DataLoader workers (persistent ones especially) hold
        # their own copy of this dataset, and a plain int set in the main process never reaches them.
        # A fork inherits the mapping; spawn/forkserver pickle it through torch.multiprocessing's
        # shared-storage reducer. Plain pickle / deepcopy give an independent copy.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    @classmethod
    def from_prepared(cls, root: str, split: str, **kwargs):
        """Open `{root}/{split}_data.npy` with `{split}_label.pkl` (or `.json` if no pickle)."""
        pkl = os.path.join(root, f"{split}_label.pkl")
        label = pkl if os.path.exists(pkl) else os.path.join(root, f"{split}_label.json")
        return cls(os.path.join(root, f"{split}_data.npy"), label, **kwargs)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation random stream of `epoch`; also seen by already running (persistent)
        DataLoader workers. Call it before starting the epoch's iterator: batches a worker has
        already prefetched keep the epoch they were made with."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.data.shape[0]

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _sample(self, index: int) -> np.ndarray:
        return np.array(self.data[index], dtype=np.float32)   # copy out of the memmap


class PretrainFeeder(_PreparedFeeder):
    """`Feeder_dual` (method.md §1.4): item i -> ([view1, view2], label, frame), two independent
    augmentations (crop ratio 6, shear 0.5 by default, §2) of the float32 (3, 50, 25, 2) sample.

    augment=False returns the unaugmented `(x, label, frame)` instead, for training loops that
    augment on the device with `skelfast.data.augment.batched_two_views`.
    """

    def __init__(self, data_path: str, label_path: str, shear_amplitude: float = 0.5,
                 temporal_padding_ratio: float = 6, true_timeline: bool = True, augment: bool = True,
                 mmap: bool = True, seed: int = 0):
        super().__init__(data_path, label_path, true_timeline, mmap, seed)
        crop_padding(self.data.shape[2], temporal_padding_ratio, "temporal_padding_ratio")   # fail here, not in a worker
        check_shear(shear_amplitude)
        self.shear_amplitude, self.crop_ratio, self.augment = shear_amplitude, temporal_padding_ratio, augment

    def __getitem__(self, index: int):
        x = self._sample(index)
        label, frame = int(self.label[index]), int(self.frame[index])
        if not self.augment:
            return x, label, frame
        rng = self._rng(index)
        views = [augment_sample(x, rng, self.shear_amplitude, self.crop_ratio) for _ in range(2)]
        return views, label, frame


class EvalFeeder(_PreparedFeeder):
    """`Feeder_single` (method.md §1.4): item i -> (x, label, frame); augmentations off by default,
    as in every linear-evaluation config (§2 table)."""

    def __init__(self, data_path: str, label_path: str, shear_amplitude: float = -1,
                 temporal_padding_ratio: float = -1, true_timeline: bool = True, mmap: bool = True, seed: int = 0):
        super().__init__(data_path, label_path, true_timeline, mmap, seed)
        crop_padding(self.data.shape[2], temporal_padding_ratio, "temporal_padding_ratio")   # fail here, not in a worker
        check_shear(shear_amplitude)
        self.shear_amplitude, self.crop_ratio = shear_amplitude, temporal_padding_ratio

    def __getitem__(self, index: int):
        x = self._sample(index)
        if self.shear_amplitude > 0 or self.crop_ratio > 0:
            x = augment_sample(x, self._rng(index), self.shear_amplitude, self.crop_ratio)
        return x, int(self.label[index]), int(self.frame[index])
